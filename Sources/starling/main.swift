import StarlingModels
print("starling")

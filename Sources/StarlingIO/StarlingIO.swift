public enum StarlingIO {}

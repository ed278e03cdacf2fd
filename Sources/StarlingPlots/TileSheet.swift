



/// Small images laid out in a grid of tiles, each enlarged `scale` times and captioned underneath, under an
/// optional title and over an optional footer: the outlier sheet, the image-search strip and the VAE manifold.
public struct TileSheet: Sendable {
    public struct Tile: Sendable {
        /// `height` x `width` x `channels` values in [0, 1], row-major.
        public var pixels: [Float]
        /// Lines of text drawn under the image (clipped to the tile's width).
        public var caption: [String]
        public init(pixels: [Float], caption: [String] = []) { self.pixels = pixels; self.caption = caption }
    }

    public let height: Int, width: Int, channels: Int
    public var scale = 2
    /// Pixels between tiles (and around the sheet).
    public var gap = 4
    public var title: String?
    public var footer: String?

    public init(height: Int, width: Int, channels: Int = 1) {
        precondition(height > 0 && width > 0 && (channels == 1 || channels == 3), "tiles are gray or RGB images")
        self.height = height
        self.width = width
        self.channels = channels
    }

    /// Draws `rows` of tiles (rows may differ in length; each tile's caption takes as many lines as the longest).
    public func render(_ rows: [[Tile]]) -> PixelCanvas {
        let captionLines = rows.flatMap { $0.map(\.caption.count) }.max() ?? 0
        let tileWidth = width * scale, tileHeight = height * scale
        let cellHeight = tileHeight + captionLines * BitmapFont.lineHeight + (captionLines > 0 ? 2 : 0)
        let columns = rows.map(\.count).max() ?? 0
        let titleHeight = title == nil ? 0 : 2 * BitmapFont.lineHeight + 4
        let footerHeight = footer == nil ? 0 : BitmapFont.lineHeight + 4
        let textWidth = max(title.map { 2 * BitmapFont.width(of: $0) } ?? 0, footer.map(BitmapFont.width) ?? 0)
        let sheetWidth = max(columns * (tileWidth + gap) + gap, textWidth + 2 * max(gap, 4), 1)
        let sheetHeight = max(titleHeight + rows.count * (cellHeight + gap) + gap + footerHeight, 1)
        var canvas = PixelCanvas(width: sheetWidth, height: sheetHeight)
        if let title { canvas.text(title, x: max(gap, 4), y: max(gap, 4), color: .black, scale: 2) }
        let characters = max(1, (tileWidth + 1) / BitmapFont.advance)
        for (r, row) in rows.enumerated() {
            let y = titleHeight + gap + r * (cellHeight + gap)
            for (c, tile) in row.enumerated() {
                let x = gap + c * (tileWidth + gap)
                canvas.image(tile.pixels, height: height, width: width, channels: channels, x: x, y: y, scale: scale)
                for (line, text) in tile.caption.enumerated() {
                    canvas.text(String(text.prefix(characters)), x: x, y: y + tileHeight + 2 + line * BitmapFont.lineHeight, color: .black)
                }
            }
        }
        if let footer { canvas.text(footer, x: max(gap, 4), y: sheetHeight - footerHeight + 2, color: .black) }
        return canvas
    }
}

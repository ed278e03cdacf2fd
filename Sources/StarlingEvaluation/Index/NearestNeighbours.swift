import StarlingCore

/// How far apart two codes are.
public enum DistanceMetric: String, CaseIterable, Sendable {
    /// Euclidean distance.
    case l2
    /// 1 - cosine similarity (0 for the same direction, 2 for opposite ones); a zero vector is at distance 1 from all.
    case cosine
}

/// One search result: a database row and its distance to the query.
public struct Neighbour: Equatable, Sendable {
    public var index: Int
    public var distance: Float
    public init(index: Int, distance: Float) { self.index = index; self.distance = distance }
}

/// Exact k-nearest-neighbour search by brute force on sgemm.
///
/// Distances come from dot products: |q - x|^2 = |q|^2 + |x|^2 - 2 q.x, and cosine = q.x / (|q| |x|). The
/// database is walked in blocks of `blockRows` rows against blocks of `queryBlock` queries, so memory beyond the
/// inputs stays at one block of products (queryBlock x blockRows floats) and one normalised database block,
/// whatever the database's size. Each query keeps its best k in a small sorted list.
public enum NearestNeighbours {
    /// For each of the rows of `queries` ([Q, dimension], row-major), the `k` rows of `database` ([N, dimension])
    /// nearest to it, nearest first; equal distances in row order. `exclude[q]` is a database row that query q
    /// must not return (itself, when the queries are database rows).
    public static func search(queries: [Float], database: [Float], dimension: Int, k: Int, metric: DistanceMetric,
                              exclude: [Int?]? = nil, blockRows: Int = 4096, queryBlock: Int = 256) -> [[Neighbour]] {
        precondition(dimension > 0 && k > 0 && blockRows > 0 && queryBlock > 0, "search needs a dimension, k and block sizes")
        precondition(queries.count % dimension == 0 && database.count % dimension == 0, "rows of \(dimension) values")
        let queryCount = queries.count / dimension, rows = database.count / dimension
        precondition(exclude.map { $0.count == queryCount } ?? true, "one exclusion per query")
        var results = [[Neighbour]](repeating: [], count: queryCount)
        let queryNorms = squaredNorms(queries, dimension: dimension), rowNorms = squaredNorms(database, dimension: dimension)
        var products = [Float](repeating: 0, count: min(queryBlock, queryCount) * min(blockRows, rows))
        var block = [Float](repeating: 0, count: metric == .cosine ? min(blockRows, rows) * dimension : 0)
        var q0 = 0
        while q0 < queryCount {
            let qn = min(queryBlock, queryCount - q0)
            var r0 = 0
            while r0 < rows {
                let rn = min(blockRows, rows - r0)
                queries.withUnsafeBufferPointer { q in
                    database.withUnsafeBufferPointer { d in
                        block.withUnsafeMutableBufferPointer { b in
                            products.withUnsafeMutableBufferPointer { p in
                                var x = d.baseAddress! + r0 * dimension
                                if metric == .cosine {   // unit rows, so that the product is the cosine
                                    for r in 0..<rn {
                                        let norm = rowNorms[r0 + r], scale: Float = norm > 0 ? 1 / norm.squareRoot() : 0
                                        let source = x + r * dimension, target = b.baseAddress! + r * dimension
                                        for j in 0..<dimension { target[j] = source[j] * scale }
                                    }
                                    x = UnsafePointer(b.baseAddress!)
                                }
                                // products[i, r] = query (q0 + i) . row (r0 + r)
                                BLAS.sgemm(transA: false, transB: true, m: qn, n: rn, k: dimension, a: q.baseAddress! + q0 * dimension, lda: dimension,
                                           b: x, ldb: dimension, beta: 0, c: p.baseAddress!, ldc: rn)
                            }
                        }
                    }
                }
                // Rank by the squared distance for l2 (the square root comes at the end) and by 1 - cosine.
                products.withUnsafeBufferPointer { p in
                    rowNorms.withUnsafeBufferPointer { norms in
                        for i in 0..<qn {
                            let query = q0 + i, skip = exclude?[query] ?? -1
                            let queryNorm = queryNorms[query], queryScale: Float = queryNorm > 0 ? 1 / queryNorm.squareRoot() : 0
                            let row = p.baseAddress! + i * rn, rowNorm = norms.baseAddress! + r0
                            var best = results[query]
                            var worst = best.count == k ? best[k - 1].distance : .infinity
                            for r in 0..<rn {
                                let distance = metric == .l2 ? max(0, queryNorm + rowNorm[r] - 2 * row[r]) : 1 - row[r] * queryScale
                                if distance < worst && r0 &+ r != skip {
                                    insert(Neighbour(index: r0 + r, distance: distance), into: &best, k: k)
                                    if best.count == k { worst = best[k - 1].distance }
                                }
                            }
                            results[query] = best
                        }
                    }
                }
                r0 += rn
            }
            q0 += qn
        }
        if metric == .l2 {
            for q in results.indices { for j in results[q].indices { results[q][j].distance = results[q][j].distance.squareRoot() } }
        }
        return results
    }

    /// Keeps `best` the k smallest seen so far, sorted; a candidate equal to an entry goes after it, so that
    /// rows seen earlier (lower indices) win ties.
    @inline(__always)
    static func insert(_ candidate: Neighbour, into best: inout [Neighbour], k: Int) {
        if best.count == k {
            guard candidate.distance < best[k - 1].distance else { return }
            best.removeLast()
        }
        var position = best.count
        while position > 0 && best[position - 1].distance > candidate.distance { position -= 1 }
        best.insert(candidate, at: position)
    }

    /// |row|^2 of each row.
    static func squaredNorms(_ values: [Float], dimension: Int) -> [Float] {
        let rows = values.count / dimension
        var norms = [Float](repeating: 0, count: rows)
        values.withUnsafeBufferPointer { v in
            for r in 0..<rows {
                let row = v.baseAddress! + r &* dimension
                var sum: Float = 0
                for j in 0..<dimension { sum += row[j] * row[j] }
                norms[r] = sum
            }
        }
        return norms
    }

    /// Mean over the queries of the fraction of their neighbours that share their label: precision@k of a
    /// retrieval where "relevant" means "same label". Each query's list may be shorter than k (tiny databases):
    /// it is divided by k all the same, so missing neighbours count as misses.
    public static func precisionAtK(queryLabels: [Int32], neighbours: [[Neighbour]], databaseLabels: [Int32], k: Int) -> Double {
        precondition(queryLabels.count == neighbours.count && k > 0, "one label per query")
        guard !neighbours.isEmpty else { return 0 }
        var total = 0.0
        for (label, found) in zip(queryLabels, neighbours) {
            total += Double(found.prefix(k).filter { databaseLabels[$0.index] == label }.count) / Double(k)
        }
        return total / Double(neighbours.count)
    }
}

// swift-tools-version:5.9
// Tern for iOS: the generated Swift bindings over the Rust client core.
// Run ../build-xcframework.sh first: it creates TernFFI.xcframework (C modules TernFFI and
// TernClientFFI) and Sources/Tern/Tern.swift + TernClient.swift (one module, `import Tern`).
import PackageDescription

let package = Package(
    name: "TernKit",
    platforms: [.iOS(.v15)],
    products: [.library(name: "Tern", targets: ["Tern"])],
    targets: [
        .binaryTarget(name: "TernFFI", path: "TernFFI.xcframework"),
        .target(name: "Tern", dependencies: ["TernFFI"], path: "Sources/Tern"),
    ]
)

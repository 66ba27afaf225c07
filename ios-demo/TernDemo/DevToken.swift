import CryptoKit
import Foundation

/// Mints tokens in tern-server's format with the PUBLIC development secret, so the demo
/// can log in to `tern-server --dev`. A real app gets its token from its own backend.
enum DevToken {
    static let devSecret = "tern-dev-secret-do-not-use-in-production"

    static func mint(user: String, ttl: TimeInterval = 30 * 24 * 3600) -> String {
        let exp = Int(Date().timeIntervalSince1970 + ttl)
        let payload = base64url(Data("{\"sub\":\"\(user)\",\"exp\":\(exp)}".utf8))
        let key = SymmetricKey(data: Data(devSecret.utf8))
        let mac = HMAC<SHA256>.authenticationCode(for: Data(payload.utf8), using: key)
        return payload + "." + base64url(Data(mac))
    }

    private static func base64url(_ data: Data) -> String {
        data.base64EncodedString()
            .replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }
}

import Foundation
import UIKit
import Tern

/// Everything the screens need from Tern, as an ObservableObject.
/// Tern calls `onEvent` on its own event thread; state changes hop to the main actor.
@MainActor
final class ChatStore: ObservableObject {
    @Published var user: String?
    @Published var connection: ConnectionState = .disconnected
    @Published var conversations: [Conversation] = []
    @Published var peer: String?
    @Published var messages: [Message] = []

    private var client: TernClient?
    private var listener: Listener?

    /// The iOS simulator shares the Mac's loopback.
    let defaultServer = "127.0.0.1:7443"

    func login(server: String, user: String) {
        logout()
        let support = FileManager.default.urls(for: .applicationSupportDirectory, in: .userDomainMask)[0]
        let settings = ClientSettings(
            server: server,
            caPem: Bundle.main.url(forResource: "dev-cert", withExtension: "pem").flatMap { try? String(contentsOf: $0) },
            dataDir: support.appendingPathComponent("tern").path,
            deviceId: UIDevice.current.identifierForVendor?.uuidString ?? "ios-demo",
            platform: .ios,
            clientVersion: "0.1.0"
        )
        do {
            let client = try TernClient(settings: settings)
            let listener = Listener(store: self)
            client.setListener(listener: listener)
            // Development only: a real app gets its token from its backend.
            try client.login(user: user, token: DevToken.mint(user: user))
            self.client = client
            self.listener = listener
            self.user = user
            refresh()
        } catch {
            connection = .loginFailed(code: "LOCAL", detail: "\(error)")
        }
    }

    func logout() {
        client?.logout()
        client?.shutdown()
        client = nil
        user = nil
        peer = nil
    }

    func open(_ peer: String) {
        self.peer = peer
        try? client?.markRead(kind: .direct, conversation: peer)
        refresh()
    }

    func send(_ text: String) {
        guard let peer, !text.isEmpty else { return }
        _ = try? client?.sendText(to: peer, text: text)
        refresh()
    }

    func retry(_ localId: Int64) {
        _ = try? client?.retry(localId: localId)
        refresh()
    }

    func networkChanged(_ label: String) { client?.networkChanged(label: label) }
    func setForeground(_ foreground: Bool) { client?.setForeground(foreground: foreground) }

    fileprivate func handle(_ event: TernEvent) {
        switch event {
        case .connectionStateChanged(let state): connection = state
        case .messageReceived(let message):
            if message.conversation == peer { try? client?.markRead(kind: .direct, conversation: message.conversation) }
            refresh()
        case .messageStatusChanged, .messageUpdated, .conversationUpdated: refresh()
        case .syncProgress: break
        case .transportChanged: break
        }
    }

    private func refresh() {
        conversations = (try? client?.conversations()) ?? []
        if let peer {
            messages = ((try? client?.messages(kind: .direct, conversation: peer, before: nil, limit: 200)) ?? []).reversed()
        }
    }

    /// `TernListener` is `Sendable`; the weak reference is written once, in `init`.
    private final class Listener: TernListener, @unchecked Sendable {
        weak var store: ChatStore?
        init(store: ChatStore) { self.store = store }
        func onEvent(event: TernEvent) {
            Task { @MainActor [weak store] in store?.handle(event) }
        }
    }
}

extension ConnectionState {
    /// Banner text, or nil when connected.
    var banner: String? {
        switch self {
        case .connected: return nil
        case .connecting: return "Connecting…"
        case .disconnected: return "Offline"
        case .waitingToReconnect(let delayMs): return "Reconnecting in \((delayMs + 999) / 1000)s"
        case .kickedOut(_, let text): return "Signed out: \(text)"
        case .loginFailed(let code, _): return "Login failed (\(code))"
        }
    }
}

extension MessageStatus {
    var tick: String {
        switch self {
        case .pending: return "🕓"
        case .sent: return "✓"
        case .delivered: return "✓✓"
        case .read: return "✓✓ read"
        case .failed: return "! tap to retry"
        }
    }
}

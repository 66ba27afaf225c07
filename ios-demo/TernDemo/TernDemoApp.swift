import Network
import SwiftUI
import Tern

@main
struct TernDemoApp: App {
    @StateObject private var store = ChatStore()
    @Environment(\.scenePhase) private var scenePhase
    private let monitor = NWPathMonitor()

    var body: some Scene {
        WindowGroup {
            RootView()
                .environmentObject(store)
                .onAppear {
                    // Network changes -> networkChanged (migration or immediate reconnect).
                    monitor.pathUpdateHandler = { path in
                        let label = path.usesInterfaceType(.wifi) ? "wifi"
                            : path.usesInterfaceType(.cellular) ? "cellular" : "other"
                        Task { @MainActor in store.networkChanged(label) }
                    }
                    monitor.start(queue: DispatchQueue(label: "tern.path"))
                }
        }
        .onChange(of: scenePhase) { _, phase in
            store.setForeground(phase == .active)
        }
    }
}

struct RootView: View {
    @EnvironmentObject var store: ChatStore

    var body: some View {
        VStack(spacing: 0) {
            if store.user != nil, let banner = store.connection.banner {
                Text(banner).font(.footnote).frame(maxWidth: .infinity).padding(6).background(Color.yellow.opacity(0.4))
            }
            if store.user == nil {
                LoginView()
            } else if let peer = store.peer {
                ChatView(peer: peer)
            } else {
                ConversationListView()
            }
        }
    }
}

struct LoginView: View {
    @EnvironmentObject var store: ChatStore
    @State private var server = ""
    @State private var user = ""

    var body: some View {
        Form {
            Section("Tern demo") {
                TextField("Server (host:port)", text: $server).textInputAutocapitalization(.never)
                TextField("User id", text: $user).textInputAutocapitalization(.never)
                Button("Log in") { store.login(server: server.isEmpty ? store.defaultServer : server, user: user) }
                    .disabled(user.isEmpty)
            }
            Text("Development build: the token is minted from the public dev secret of `tern-server --dev`.")
                .font(.footnote)
        }
    }
}

struct ConversationListView: View {
    @EnvironmentObject var store: ChatStore
    @State private var newPeer = ""

    var body: some View {
        NavigationStack {
            List {
                HStack {
                    TextField("Chat with…", text: $newPeer).textInputAutocapitalization(.never)
                    Button("Open") { store.open(newPeer); newPeer = "" }.disabled(newPeer.isEmpty)
                }
                ForEach(store.conversations, id: \.id) { c in
                    Button { store.open(c.id) } label: {
                        HStack {
                            VStack(alignment: .leading) {
                                Text(c.id).font(.headline)
                                Text(c.lastMessage?.text ?? "").font(.subheadline).lineLimit(1)
                            }
                            Spacer()
                            if c.unread > 0 {
                                Text("\(c.unread)").font(.caption).padding(6).background(Circle().fill(Color.red)).foregroundColor(.white)
                            }
                        }
                    }
                }
            }
            .navigationTitle("Chats")
            .toolbar { Button("Log out") { store.logout() } }
        }
    }
}

struct ChatView: View {
    @EnvironmentObject var store: ChatStore
    let peer: String
    @State private var draft = ""

    var body: some View {
        VStack {
            HStack {
                Button("‹ Back") { store.peer = nil }
                Text(peer).font(.headline)
                Spacer()
            }.padding(.horizontal)
            ScrollView {
                LazyVStack(spacing: 4) {
                    ForEach(store.messages, id: \.localId) { m in
                        HStack {
                            if m.outgoing { Spacer() }
                            VStack(alignment: m.outgoing ? .trailing : .leading) {
                                Text(m.text ?? "(\(m.body.count) bytes)")
                                if m.outgoing { Text(m.status.tick).font(.caption2) }
                            }
                            .padding(8)
                            .background(RoundedRectangle(cornerRadius: 12).fill(m.outgoing ? Color.green.opacity(0.2) : Color.gray.opacity(0.15)))
                            .onTapGesture { if case .failed = m.status { store.retry(m.localId) } }
                            if !m.outgoing { Spacer() }
                        }
                    }
                }.padding(.horizontal)
            }
            HStack {
                TextField("Message", text: $draft).textFieldStyle(.roundedBorder)
                Button("Send") { store.send(draft); draft = "" }.disabled(draft.isEmpty)
            }.padding()
        }
    }
}

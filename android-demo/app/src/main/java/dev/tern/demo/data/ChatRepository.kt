package dev.tern.demo.data

import dev.tern.ClientSettings
import dev.tern.ConnectionState
import dev.tern.Conversation
import dev.tern.client.ConversationKind
import dev.tern.client.GroupInfo
import dev.tern.Message
import dev.tern.client.MessageStatus
import dev.tern.TernClient
import dev.tern.TernEvent
import dev.tern.TernListener
import kotlinx.coroutines.flow.MutableSharedFlow
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.SharedFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.asSharedFlow
import kotlinx.coroutines.flow.asStateFlow

/**
 * Everything the app's screens need from Tern, as plain Kotlin flows.
 *
 * This file has no Android imports on purpose: the same source is compiled and tested
 * on the JVM against a real tern-server (see `ffi/kotlin-jvm-test.sh`), so the part of
 * the app that touches Tern is verified without an emulator.
 *
 * Threading: Tern calls [onEvent] on its own event thread; flows are thread-safe, and
 * collectors (the view-models) decide which dispatcher they observe on.
 */
class ChatRepository(settings: ClientSettings) : TernListener, AutoCloseable {
    private val client = TernClient(settings)

    private val _connection = MutableStateFlow<ConnectionState>(ConnectionState.Disconnected)
    /** The connection as the banner shows it. */
    val connection: StateFlow<ConnectionState> = _connection.asStateFlow()

    private val _conversations = MutableStateFlow<List<Conversation>>(emptyList())
    /** Conversations, most recent first, with unread counts. */
    val conversations: StateFlow<List<Conversation>> = _conversations.asStateFlow()

    private val _incoming = MutableSharedFlow<Message>(replay = 64, extraBufferCapacity = 1024)
    /** New messages (incoming, or sent from this user's other devices), in timeline order, each once. */
    val incoming: SharedFlow<Message> = _incoming.asSharedFlow()

    private val _statuses = MutableSharedFlow<StatusChange>(replay = 64, extraBufferCapacity = 1024)
    /** Delivery ticks of outgoing messages. */
    val statuses: SharedFlow<StatusChange> = _statuses.asSharedFlow()

    /** One delivery-status change. */
    data class StatusChange(val localId: Long, val status: MessageStatus)

    private val _updates = MutableSharedFlow<Message>(replay = 64, extraBufferCapacity = 1024)
    /** Messages changed in place: recalled, or a group read count grew. */
    val updates: SharedFlow<Message> = _updates.asSharedFlow()

    init {
        client.setListener(this)
    }

    fun login(user: String, token: String) = client.login(user, token)

    fun logout() = client.logout()

    /** Sends a text; the message is safe in the outbox when this returns. */
    fun send(to: String, text: String): Message = client.sendText(to, text)

    fun retry(localId: Long): Message = client.retry(localId)

    /** Messages with [peer], oldest first; pass the oldest local id seen to load more. */
    fun history(peer: String, before: Long? = null, limit: Int = 50): List<Message> =
        client.messages(ConversationKind.DIRECT, peer, before, limit.toUInt()).reversed()

    fun markRead(peer: String, kind: ConversationKind = ConversationKind.DIRECT) {
        client.markRead(kind, peer)
        refreshConversations()
    }

    /** Creates a group (blocks until the server answers: call off the main thread). */
    fun createGroup(name: String, members: List<String>): GroupInfo = client.createGroup(name, members)

    fun sendToGroup(group: String, text: String): Message = client.sendGroupText(group, text)

    /** A group's messages, oldest first. */
    fun groupHistory(group: String, limit: Int = 50): List<Message> =
        client.messages(ConversationKind.GROUP, group, null, limit.toUInt()).reversed()

    /** Recalls an own message (blocks until the server answers). */
    fun recall(localId: Long) = client.recall(localId)

    /** Older messages, from the device or the server (blocks when it asks the server). */
    fun loadOlder(peer: String, before: Long?, kind: ConversationKind = ConversationKind.DIRECT) =
        client.loadHistory(kind, peer, before, 50u)

    /** The app badge. */
    fun totalUnread(): ULong = client.totalUnread()

    /** From ConnectivityManager / NWPathMonitor callbacks. */
    fun networkChanged(label: String) = client.networkChanged(label)

    /** From the app lifecycle. */
    fun setForeground(foreground: Boolean) = client.setForeground(foreground)

    fun refreshConversations() {
        runCatching { client.conversations() }.onSuccess { _conversations.value = it }
    }

    override fun onEvent(event: TernEvent) {
        when (event) {
            is TernEvent.ConnectionStateChanged -> _connection.value = event.state
            is TernEvent.MessageReceived -> _incoming.tryEmit(event.message)
            is TernEvent.MessageStatusChanged -> _statuses.tryEmit(StatusChange(event.localId, event.status))
            is TernEvent.MessageUpdated -> _updates.tryEmit(event.message)
            is TernEvent.ConversationUpdated -> refreshConversations()
            is TernEvent.SyncProgress -> Unit
            is TernEvent.TransportChanged -> Unit
        }
    }

    /** Stops Tern; no event arrives after this returns. */
    override fun close() = client.shutdown()

    companion object {
        /** A short label for the connection banner, or null when connected. */
        fun bannerText(state: ConnectionState): String? = when (state) {
            is ConnectionState.Connected -> null
            is ConnectionState.Connecting -> "Connecting…"
            is ConnectionState.Disconnected -> "Offline"
            is ConnectionState.WaitingToReconnect -> "Reconnecting in ${(state.delayMs + 999uL) / 1000uL}s"
            is ConnectionState.KickedOut -> "Signed out: ${state.text}"
            is ConnectionState.LoginFailed -> "Login failed (${state.code})"
        }

        /** The tick shown next to an outgoing message. */
        fun tick(status: MessageStatus): String = when (status) {
            is MessageStatus.Pending -> "🕓"
            is MessageStatus.Sent -> "✓"
            is MessageStatus.Delivered -> "✓✓"
            is MessageStatus.Read -> "✓✓ read"
            is MessageStatus.Failed -> "!"
        }
    }
}

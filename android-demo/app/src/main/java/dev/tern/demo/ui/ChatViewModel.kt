package dev.tern.demo.ui

import android.app.Application
import androidx.lifecycle.AndroidViewModel
import androidx.lifecycle.viewModelScope
import dev.tern.ConnectionState
import dev.tern.Conversation
import dev.tern.Message
import dev.tern.demo.TernApp
import dev.tern.demo.data.ChatRepository
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.Job
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.asStateFlow
import kotlinx.coroutines.launch

/** Screen state on top of [ChatRepository]; all Tern calls are quick local operations. */
class ChatViewModel(app: Application) : AndroidViewModel(app) {
    private val tern = app as TernApp
    private var watching: Job? = null

    private val _user = MutableStateFlow(tern.user)
    val user: StateFlow<String?> = _user.asStateFlow()
    private val _connection = MutableStateFlow<ConnectionState>(ConnectionState.Disconnected)
    val connection: StateFlow<ConnectionState> = _connection.asStateFlow()
    private val _conversations = MutableStateFlow<List<Conversation>>(emptyList())
    val conversations: StateFlow<List<Conversation>> = _conversations.asStateFlow()
    private val _peer = MutableStateFlow<String?>(null)
    val peer: StateFlow<String?> = _peer.asStateFlow()
    private val _messages = MutableStateFlow<List<Message>>(emptyList())
    val messages: StateFlow<List<Message>> = _messages.asStateFlow()

    init {
        tern.repository?.let(::watch)
    }

    fun login(server: String, user: String) {
        val repo = tern.login(server, user)
        _user.value = user
        watch(repo)
    }

    fun logout() {
        watching?.cancel()
        tern.logout()
        _user.value = null
        _peer.value = null
    }

    fun open(peer: String) {
        _peer.value = peer
        reload()
        tern.repository?.markRead(peer)
    }

    fun back() {
        _peer.value = null
    }

    fun send(text: String) {
        val peer = _peer.value ?: return
        if (text.isBlank()) return
        tern.repository?.send(peer, text)
        reload()
    }

    fun retry(localId: Long) {
        tern.repository?.retry(localId)
        reload()
    }

    private fun reload() {
        val peer = _peer.value ?: return
        _messages.value = tern.repository?.history(peer, limit = 200) ?: emptyList()
    }

    private fun watch(repo: ChatRepository) {
        watching?.cancel()
        watching = viewModelScope.launch(Dispatchers.Main) {
            launch { repo.connection.collect { _connection.value = it } }
            launch { repo.conversations.collect { _conversations.value = it } }
            launch {
                repo.incoming.collect { m ->
                    if (m.conversation == _peer.value) {
                        reload()
                        repo.markRead(m.conversation)
                    }
                }
            }
            launch { repo.statuses.collect { reload() } }
        }
    }
}

package dev.tern.demo

import android.os.Bundle
import androidx.activity.ComponentActivity
import androidx.activity.compose.BackHandler
import androidx.activity.compose.setContent
import androidx.activity.viewModels
import androidx.compose.foundation.background
import androidx.compose.foundation.clickable
import androidx.compose.foundation.layout.Arrangement
import androidx.compose.foundation.layout.Box
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.Row
import androidx.compose.foundation.layout.Spacer
import androidx.compose.foundation.layout.fillMaxSize
import androidx.compose.foundation.layout.fillMaxWidth
import androidx.compose.foundation.layout.imePadding
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.layout.safeDrawingPadding
import androidx.compose.foundation.lazy.LazyColumn
import androidx.compose.foundation.lazy.items
import androidx.compose.foundation.shape.RoundedCornerShape
import androidx.compose.material3.Badge
import androidx.compose.material3.Button
import androidx.compose.material3.HorizontalDivider
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.OutlinedTextField
import androidx.compose.material3.Surface
import androidx.compose.material3.Text
import androidx.compose.material3.TextButton
import androidx.compose.runtime.Composable
import androidx.compose.runtime.collectAsState
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.remember
import androidx.compose.runtime.setValue
import androidx.compose.ui.Alignment
import androidx.compose.ui.Modifier
import androidx.compose.ui.graphics.Color
import androidx.compose.ui.unit.dp
import dev.tern.Message
import dev.tern.client.MessageStatus
import dev.tern.demo.data.ChatRepository
import dev.tern.demo.ui.ChatViewModel

class MainActivity : ComponentActivity() {
    private val model: ChatViewModel by viewModels()

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContent { MaterialTheme { Surface(Modifier.fillMaxSize().safeDrawingPadding()) { App(model, (application as TernApp).defaultServer) } } }
    }
}

@Composable
fun App(model: ChatViewModel, defaultServer: String) {
    val user by model.user.collectAsState()
    val connection by model.connection.collectAsState()
    val peer by model.peer.collectAsState()
    Column(Modifier.fillMaxSize()) {
        ChatRepository.bannerText(connection)?.takeIf { user != null }?.let { Banner(it) }
        when {
            user == null -> LoginScreen(defaultServer) { server, name -> model.login(server, name) }
            peer == null -> ConversationList(model)
            else -> ChatScreen(model, peer!!)
        }
    }
}

@Composable
fun Banner(text: String) {
    Text(text, Modifier.fillMaxWidth().background(Color(0xFFFFE082)).padding(8.dp), style = MaterialTheme.typography.bodySmall)
}

@Composable
fun LoginScreen(defaultServer: String, onLogin: (String, String) -> Unit) {
    var server by remember { mutableStateOf(defaultServer) }
    var user by remember { mutableStateOf("") }
    Column(Modifier.fillMaxSize().padding(24.dp), verticalArrangement = Arrangement.spacedBy(12.dp)) {
        Text("Tern demo", style = MaterialTheme.typography.headlineMedium)
        OutlinedTextField(server, { server = it }, label = { Text("Server (host:port)") }, singleLine = true, modifier = Modifier.fillMaxWidth())
        OutlinedTextField(user, { user = it.trim() }, label = { Text("User id") }, singleLine = true, modifier = Modifier.fillMaxWidth())
        Button(onClick = { onLogin(server, user) }, enabled = user.isNotEmpty()) { Text("Log in") }
        Text("Development build: logs in with a token minted from the public dev secret of `tern-server --dev`.", style = MaterialTheme.typography.bodySmall)
    }
}

@Composable
fun ConversationList(model: ChatViewModel) {
    val conversations by model.conversations.collectAsState()
    var newPeer by remember { mutableStateOf("") }
    Column(Modifier.fillMaxSize()) {
        Row(Modifier.fillMaxWidth().padding(8.dp), verticalAlignment = Alignment.CenterVertically) {
            OutlinedTextField(newPeer, { newPeer = it.trim() }, label = { Text("Chat with…") }, singleLine = true, modifier = Modifier.weight(1f))
            TextButton(onClick = { model.open(newPeer); newPeer = "" }, enabled = newPeer.isNotEmpty()) { Text("Open") }
            TextButton(onClick = { model.logout() }) { Text("Log out") }
        }
        LazyColumn(Modifier.fillMaxSize()) {
            items(conversations, key = { it.id }) { c ->
                Row(Modifier.fillMaxWidth().clickable { model.open(c.id) }.padding(16.dp), verticalAlignment = Alignment.CenterVertically) {
                    Column(Modifier.weight(1f)) {
                        Text(c.id, style = MaterialTheme.typography.titleMedium)
                        Text(c.lastMessage?.text ?: "", style = MaterialTheme.typography.bodySmall, maxLines = 1)
                    }
                    if (c.unread > 0uL) Badge { Text(c.unread.toString()) }
                }
                HorizontalDivider()
            }
        }
    }
}

@Composable
fun ChatScreen(model: ChatViewModel, peer: String) {
    val messages by model.messages.collectAsState()
    var draft by remember { mutableStateOf("") }
    BackHandler { model.back() }
    Column(Modifier.fillMaxSize().imePadding()) {
        Row(verticalAlignment = Alignment.CenterVertically) {
            TextButton(onClick = { model.back() }) { Text("‹ Back") }
            Text(peer, style = MaterialTheme.typography.titleLarge)
        }
        LazyColumn(Modifier.weight(1f).padding(horizontal = 8.dp), reverseLayout = true) {
            items(messages.reversed(), key = { it.localId }) { m -> Bubble(m) { model.retry(m.localId) } }
        }
        Row(Modifier.fillMaxWidth().padding(8.dp), verticalAlignment = Alignment.CenterVertically) {
            OutlinedTextField(draft, { draft = it }, modifier = Modifier.weight(1f), placeholder = { Text("Message") })
            Spacer(Modifier.padding(4.dp))
            Button(onClick = { model.send(draft); draft = "" }, enabled = draft.isNotBlank()) { Text("Send") }
        }
    }
}

@Composable
fun Bubble(m: Message, onRetry: () -> Unit) {
    val mine = m.outgoing
    Box(Modifier.fillMaxWidth().padding(vertical = 2.dp), contentAlignment = if (mine) Alignment.CenterEnd else Alignment.CenterStart) {
        Column(
            Modifier.background(if (mine) Color(0xFFDCF8C6) else Color(0xFFEFEFEF), RoundedCornerShape(12.dp))
                .clickable(enabled = m.status is MessageStatus.Failed, onClick = onRetry)
                .padding(horizontal = 12.dp, vertical = 6.dp),
        ) {
            Text(m.text ?: "(${m.body.size} bytes)")
            if (mine) {
                val tick = ChatRepository.tick(m.status)
                Text(if (m.status is MessageStatus.Failed) "$tick tap to retry" else tick, style = MaterialTheme.typography.labelSmall, modifier = Modifier.align(Alignment.End))
            }
        }
    }
}

package dev.tern.demo

import dev.tern.ClientSettings
import dev.tern.ConnectionState
import dev.tern.client.MessageStatus
import dev.tern.Platform
import dev.tern.TernException
import dev.tern.demo.data.ChatRepository
import dev.tern.demo.data.DevToken
import java.io.File
import java.nio.file.Files
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.AfterAll
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertThrows
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.BeforeAll
import org.junit.jupiter.api.Test

/**
 * The demo app's repository (the code that touches Tern) against a real tern-server,
 * on the JVM through the generated Kotlin bindings: the stand-in for Android.
 */
class ChatRepositoryTest {
    companion object {
        private lateinit var server: Process
        private lateinit var addr: String
        private lateinit var certPem: String
        private val bin = System.getenv("TERN_SERVER_BIN") ?: "target/debug/tern-server"
        private val tmp: File = Files.createTempDirectory("tern-kt").toFile()

        @BeforeAll
        @JvmStatic
        fun startServer() {
            server = ProcessBuilder(bin, "--dev", "--data", File(tmp, "server").path, "--quic", "127.0.0.1:0",
                "--http", "127.0.0.1:0").redirectError(ProcessBuilder.Redirect.DISCARD).start()
            val lines = server.inputStream.bufferedReader()
            var cert: String? = null
            while (cert == null) {
                val line = lines.readLine() ?: error("tern-server exited during start-up")
                if (line.startsWith("quic listening on ")) addr = line.removePrefix("quic listening on ")
                if (line.startsWith("dev certificate: ")) cert = line.removePrefix("dev certificate: ")
            }
            certPem = File(cert).readText()
            Thread { lines.forEachLine { } }.apply { isDaemon = true }.start()
        }

        @AfterAll
        @JvmStatic
        fun stopServer() {
            server.destroy()
            server.waitFor()
        }

        fun token(user: String): String =
            ProcessBuilder(bin, "token", "--dev", "--user", user).start().inputStream.bufferedReader().readText().trim()
    }

    private fun repo(user: String, device: String = "jvm-$user"): ChatRepository {
        val settings = ClientSettings(addr, certPem, File(tmp, "client-$user-$device").path,
            device, Platform.ANDROID, "1.0.0")
        return ChatRepository(settings).also { it.login(user, token(user)) }
    }

    private fun <T> await(block: suspend () -> T): T = runBlocking { withTimeout(20_000) { block() } }

    @Test
    fun twoUsersChatWithTicksHistoryAndUnreadCounts() {
        val alice = repo("alice")
        val bob = repo("bob")
        try {
            await { alice.connection.first { it is ConnectionState.Connected } }
            await { bob.connection.first { it is ConnectionState.Connected } }
            assertNull(ChatRepository.bannerText(alice.connection.value))

            val sent = alice.send("bob", "hello from kotlin")
            assertEquals(MessageStatus.Pending, sent.status)
            val got = await { bob.incoming.first { it.text == "hello from kotlin" } }
            assertEquals("alice", got.sender)
            await { alice.statuses.first { it.localId == sent.localId && it.status == MessageStatus.Delivered } }
            assertEquals("✓✓", ChatRepository.tick(MessageStatus.Delivered))

            for (i in 1..5) alice.send("bob", "m$i")
            await { bob.incoming.first { it.text == "m5" } }
            await { bob.conversations.first { list -> list.any { it.id == "alice" && it.unread == 6uL } } }
            assertEquals(listOf("hello from kotlin", "m1", "m2", "m3", "m4", "m5"), bob.history("alice").map { it.text })
            bob.markRead("alice")
            assertEquals(0uL, bob.conversations.value.first { it.id == "alice" }.unread)

            assertThrows(TernException.InvalidArgument::class.java) { alice.send("not valid!", "x") }
        } finally {
            alice.close()
            bob.close()
        }
    }

    @Test
    fun groupsReadCountsAndRecall() {
        val erin = repo("erin")
        val frank = repo("frank")
        try {
            await { erin.connection.first { it is ConnectionState.Connected } }
            await { frank.connection.first { it is ConnectionState.Connected } }
            val group = erin.createGroup("kotlin crew", listOf("frank"))
            assertEquals(listOf("erin", "frank"), group.members)
            val sent = erin.sendToGroup(group.id, "hi crew")
            await { frank.incoming.first { it.text == "hi crew" && it.conversation == group.id } }
            frank.markRead(group.id, dev.tern.client.ConversationKind.GROUP)
            await { erin.updates.first { it.localId == sent.localId && it.readCount == 1u } }

            val oops = erin.send("frank", "oops")
            await { frank.incoming.first { it.text == "oops" } }
            await { erin.statuses.first { it.localId == oops.localId && it.status == MessageStatus.Delivered } }
            erin.recall(oops.localId)
            await { frank.updates.first { it.recalled } }
            assertEquals(listOf("hi crew"), frank.groupHistory(group.id).map { it.text })
            val theirs = frank.history("erin").first { it.text.isNullOrEmpty() || it.recalled }
            assertThrows(TernException.NotFound::class.java) { frank.recall(theirs.localId) }
        } finally {
            erin.close()
            frank.close()
        }
    }

    @Test
    fun tokensMintedInKotlinAreAcceptedByTheServer() {
        val settings = ClientSettings(addr, certPem, File(tmp, "client-dave").path, "jvm-dave", Platform.ANDROID, "1.0.0")
        ChatRepository(settings).use { dave ->
            dave.login("dave", DevToken.mint("dave"))
            await { dave.connection.first { it is ConnectionState.Connected } }
        }
        ChatRepository(ClientSettings(addr, certPem, File(tmp, "client-eve").path, "jvm-eve", Platform.ANDROID, "1"))
            .use { eve ->
                eve.login("eve", DevToken.mint("eve", secret = "not-the-server-secret"))
                val failed = await { eve.connection.first { it is ConnectionState.LoginFailed } }
                assertEquals("BAD_TOKEN", (failed as ConnectionState.LoginFailed).code)
            }
    }

    @Test
    fun aSecondPhoneSignsTheFirstOut() {
        val first = repo("carol", "phone-1")
        try {
            await { first.connection.first { it is ConnectionState.Connected } }
            val second = repo("carol", "phone-2")
            try {
                val kicked = await { first.connection.first { it is ConnectionState.KickedOut } }
                assertTrue(ChatRepository.bannerText(kicked)!!.startsWith("Signed out"))
            } finally {
                second.close()
            }
        } finally {
            first.close()
        }
    }
}

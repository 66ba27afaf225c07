package dev.tern.demo

import android.app.Application
import android.content.Context
import android.net.ConnectivityManager
import android.net.Network
import android.net.NetworkCapabilities
import android.provider.Settings
import androidx.lifecycle.DefaultLifecycleObserver
import androidx.lifecycle.LifecycleOwner
import androidx.lifecycle.ProcessLifecycleOwner
import dev.tern.ClientSettings
import dev.tern.Platform
import dev.tern.demo.data.ChatRepository
import dev.tern.demo.data.DevToken

/**
 * Owns the one [ChatRepository] of the process and wires the platform into Tern:
 * connectivity changes -> `networkChanged`, process foreground/background -> `setForeground`.
 */
class TernApp : Application() {
    var repository: ChatRepository? = null
        private set
    var user: String? = null
        private set

    /** The server as seen from the emulator: the host's loopback is 10.0.2.2. */
    val defaultServer = "10.0.2.2:7443"

    fun login(server: String, user: String): ChatRepository {
        repository?.close()
        val settings = ClientSettings(
            server = server,
            // tern-data/dev-cert.pem of the dev server, copied by build-native.sh.
            caPem = runCatching { assets.open("dev-cert.pem").bufferedReader().readText() }.getOrNull(),
            dataDir = filesDir.resolve("tern").path,
            deviceId = Settings.Secure.getString(contentResolver, Settings.Secure.ANDROID_ID) ?: "android-demo",
            platform = Platform.ANDROID,
            clientVersion = BuildConfig.VERSION_NAME,
        )
        return ChatRepository(settings).also {
            it.login(user, DevToken.mint(user)) // development only: a real app gets its token from its backend
            it.refreshConversations()
            repository = it
            this.user = user
        }
    }

    fun logout() {
        repository?.logout()
        repository?.close()
        repository = null
        user = null
    }

    override fun onCreate() {
        super.onCreate()
        ProcessLifecycleOwner.get().lifecycle.addObserver(object : DefaultLifecycleObserver {
            override fun onStart(owner: LifecycleOwner) { repository?.setForeground(true) }
            override fun onStop(owner: LifecycleOwner) { repository?.setForeground(false) }
        })
        val connectivity = getSystemService(Context.CONNECTIVITY_SERVICE) as ConnectivityManager
        connectivity.registerDefaultNetworkCallback(object : ConnectivityManager.NetworkCallback() {
            override fun onCapabilitiesChanged(network: Network, caps: NetworkCapabilities) {
                val kind = when {
                    caps.hasTransport(NetworkCapabilities.TRANSPORT_WIFI) -> "wifi"
                    caps.hasTransport(NetworkCapabilities.TRANSPORT_CELLULAR) -> "cellular"
                    else -> "other"
                }
                // The label keys the smart heartbeat's learned interval per network.
                repository?.networkChanged("$kind-${network.networkHandle}")
            }
        })
    }
}

package dev.tern.demo.data

import java.util.Base64
import javax.crypto.Mac
import javax.crypto.spec.SecretKeySpec

/**
 * Mints login tokens in the format tern-server checks (docs/operations.md):
 * `base64url(claims) "." base64url(HMAC-SHA256(secret, base64url(claims)))`.
 *
 * The demo uses it with the *public* development secret so it can log in to a
 * `tern-server --dev` without a backend. A real app never holds a secret: its backend
 * mints the token (the same ten lines, server side) and hands it to the app.
 */
object DevToken {
    /** The secret of `tern-server --dev`; public, never valid in production. */
    const val DEV_SECRET = "tern-dev-secret-do-not-use-in-production"

    fun mint(
        user: String,
        ttlSeconds: Long = 30L * 24 * 3600,
        secret: String = DEV_SECRET,
        nowSeconds: Long = System.currentTimeMillis() / 1000,
    ): String {
        require(user.matches(Regex("[A-Za-z0-9._@-]{1,64}"))) { "invalid user id" }
        val claims = """{"sub":"$user","exp":${nowSeconds + ttlSeconds}}"""
        val b64 = Base64.getUrlEncoder().withoutPadding()
        val payload = b64.encodeToString(claims.toByteArray())
        val mac = Mac.getInstance("HmacSHA256").apply { init(SecretKeySpec(secret.toByteArray(), "HmacSHA256")) }
        return payload + "." + b64.encodeToString(mac.doFinal(payload.toByteArray()))
    }
}

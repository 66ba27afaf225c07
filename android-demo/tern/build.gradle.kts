// The Tern client as an Android library (AAR): the uniffi-generated Kotlin bindings
// (src/main/java/dev/tern, generated) and libtern_ffi.so for every ABI
// (src/main/jniLibs, built by ../build-native.sh with cargo-ndk).
//
//   ./build-native.sh && ./gradlew :tern:assembleRelease
//   → tern/build/outputs/aar/tern-release.aar
//   ./gradlew :tern:publishToMavenLocal   (dev.tern:tern-android:0.1.0 in ~/.m2)
plugins {
    alias(libs.plugins.android.library)
    alias(libs.plugins.kotlin.android)
    `maven-publish`
}

android {
    namespace = "dev.tern"
    compileSdk = 35

    defaultConfig {
        minSdk = 26
        ndk { abiFilters += listOf("arm64-v8a", "armeabi-v7a", "x86_64") }
        consumerProguardFiles("consumer-rules.pro")
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions { jvmTarget = "17" }
    publishing { singleVariant("release") { withSourcesJar() } }
}

dependencies {
    // The generated bindings call the native library through JNA (its AAR carries JNA's
    // own native parts for every ABI) and use kotlinx-coroutines for async calls.
    api("${libs.jna.get()}@aar")
    api(libs.coroutines.android)
}

publishing {
    publications {
        register<MavenPublication>("release") {
            groupId = "dev.tern"
            artifactId = "tern-android"
            version = "0.1.0"
            afterEvaluate { from(components["release"]) }
        }
    }
}

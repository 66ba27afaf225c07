//! `uniffi-bindgen`, built from the same uniffi version as `tern-ffi`, so generated
//! bindings always match the library's scaffolding. Used by `ffi/generate-bindings.sh`:
//! `uniffi-bindgen generate --library target/<profile>/libtern_ffi.so -l python -o OUT`.
fn main() {
    uniffi::uniffi_bindgen_main()
}

"""Packs the tern-client wheel from a library the workspace already built.

CI's wheel: the same files, in the same places, as the wheel maturin builds (see
pyproject.toml), taken from ``cargo build --workspace`` (the library) and
``ffi/generate-bindings.sh`` (the modules uniffi generates from it), so CI does not
build the library a second time. maturin builds tern-ffi alone, with the features that
crate alone selects, and so compiles tokio, quinn, SQLite and the rest again: about six
of CI's forty minutes. The wheel you publish is still maturin's
(``PROFILE=release bash ffi/python-test.sh``).

    python3 ffi/python/pack_wheel.py LIBRARY BINDINGS_DIR OUT_DIR

LIBRARY is libtern_ffi.so; BINDINGS_DIR holds tern_ffi.py and tern_client.py. Prints
the wheel's path.
"""

import base64
import hashlib
import pathlib
import sys
import sysconfig
import tomllib
import zipfile

HERE = pathlib.Path(__file__).resolve().parent


def record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return f"{name},sha256={digest.decode()},{len(data)}"


def main() -> None:
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    library, bindings, out = (pathlib.Path(a) for a in sys.argv[1:])
    project = tomllib.loads((HERE / "pyproject.toml").read_text())["project"]
    name, version = project["name"], project["version"]
    dist = name.replace("-", "_")
    # The modules maturin writes into tern/_native/ (its __init__ re-exports both).
    files = {
        "tern/__init__.py": (HERE / "tern/__init__.py").read_bytes(),
        "tern/py.typed": (HERE / "tern/py.typed").read_bytes(),
        "tern/_native/__init__.py": b"from .tern_ffi import *  # NOQA\n"
        b"from .tern_client import *  # NOQA\n",
        "tern/_native/libtern_ffi.so": library.read_bytes(),
        "tern/_native/tern_ffi.py": (bindings / "tern_ffi.py").read_bytes(),
        "tern/_native/tern_client.py": (bindings / "tern_client.py").read_bytes(),
    }
    metadata = [
        "Metadata-Version: 2.4",
        f"Name: {name}",
        f"Version: {version}",
        *(f"Classifier: {c}" for c in project.get("classifiers", [])),
        f"Summary: {project['description']}",
        f"License-Expression: {project['license']}",
        f"Requires-Python: {project['requires-python']}",
    ]
    # A platform wheel for this machine only (maturin's manylinux tag needs its audit).
    tag = "py3-none-" + sysconfig.get_platform().replace("-", "_").replace(".", "_")
    wheel = [
        "Wheel-Version: 1.0",
        "Generator: ffi/python/pack_wheel.py",
        "Root-Is-Purelib: false",
        f"Tag: {tag}",
    ]
    info = f"{dist}-{version}.dist-info"
    files[f"{info}/METADATA"] = ("\n".join(metadata) + "\n").encode()
    files[f"{info}/WHEEL"] = ("\n".join(wheel) + "\n").encode()
    record = [record_line(n, d) for n, d in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{dist}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n, d in files.items():
            entry = zipfile.ZipInfo(n, date_time=(1980, 1, 1, 0, 0, 0))
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(entry, d)
    print(path)


if __name__ == "__main__":
    main()

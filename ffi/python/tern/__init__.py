"""Tern for Python: the Tern client core through its uniffi bindings.

Build the native library and the generated module first::

    ffi/generate-bindings.sh          # copies tern_ffi.py, tern_client.py and libtern_ffi.so here

Then::

    from tern import TernClient, ClientSettings, Platform, TernListener

Always call ``client.shutdown()`` before the interpreter exits: it returns only when no
callback can arrive any more (a callback into an exiting interpreter aborts Python).
"""

from ._native.tern_ffi import *  # noqa: F401,F403  (the generated module is the API)
# Types the client core itself derives uniffi on are generated into their own module
# (one module per Rust crate); they are part of the same API.
from ._native.tern_client import *  # noqa: F401,F403
from ._native.tern_client import ConversationKind, GroupInfo, MessageStatus  # noqa: F401
from ._native.tern_ffi import (  # noqa: F401  (names for IDEs and readers)
    ClientSettings,
    ConnectionState,
    Conversation,
    Message,
    Platform,
    TernClient,
    TernError,
    TernEvent,
    TernListener,
)

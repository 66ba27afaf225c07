"""Tern for Python: the Tern client core through its uniffi bindings.

Build the native library and the generated module first::

    ffi/generate-bindings.sh          # copies tern_ffi.py and libtern_ffi.so here

Then::

    from tern import TernClient, ClientSettings, Platform, TernListener

Always call ``client.shutdown()`` before the interpreter exits: it returns only when no
callback can arrive any more (a callback into an exiting interpreter aborts Python).
"""

from .tern_ffi import *  # noqa: F401,F403  (the generated module is the API)
from .tern_ffi import (  # noqa: F401  (names for IDEs and readers)
    ClientSettings,
    ConnectionState,
    Conversation,
    ConversationKind,
    Message,
    MessageStatus,
    Platform,
    TernClient,
    TernError,
    TernEvent,
    TernListener,
)

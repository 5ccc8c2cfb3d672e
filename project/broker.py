"""kombu's filesystem transport with whole-file writes: the example project's default broker.

kombu's own transport creates a message file and then writes it, so a worker polling the folder
can take the file while it is still empty; its consumer then dies on the empty JSON. That
happens whenever a worker publishes (a retry, a bulk fan-out, the sweep) while it consumes.
Writing under a name the reader ignores and renaming makes every message appear whole.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = f"{final}.partial"  # not "<queue>.msg": the reader skips it
        try:
            with open(partial, "wb") as file:
                file.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise filesystem.ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel

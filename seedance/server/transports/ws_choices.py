"""A /v1/stream generate with n > 1: its choices, one engine request each, under the client's one id. Chunks carry
their choice's index and one `seq` counter for the id; one `done` follows the last choice's end
(protocol/choices.py folds their ends); credit, cancel, pause, resume and priority apply to the id, so to every
choice (docs/protocol.md, "Choices"). The id is live from choice 0's submit; the other choices join once choice 0
has produced (ws_commands.py), so the connection reads the client's next message (a cancel) meanwhile."""

from __future__ import annotations

from dataclasses import dataclass

from seedance.protocol import encode_server_message
from seedance.protocol.choices import choices_done
from seedance.protocol.server_connection import ServerConnection
from seedance.server.transports.ws_generation import WsGeneration
from seedance.server.transports.ws_messages import choice_end


@dataclass(eq=False)
class WsChoices:
    id: str  # the client's id, shared by every choice
    choices: list[WsGeneration]  # by index
    owner: object = None  # its connection (a request with choices is no session turn: it never moves)
    next_seq: int = 0  # the id's chunk counter, whichever choice a chunk belongs to
    finished: bool = False  # its done is out
    pending: int = 0  # choices not yet submitted: the done waits for them too
    priority: int | None = None  # the id's last priority command, for the choices still to come

    @property
    def engine_ids(self) -> tuple[str, ...]:
        return tuple(c.stream.request_id for c in self.choices)

    @property
    def cancelled(self) -> bool:
        return all(c.cancelled for c in self.choices)

    @cancelled.setter
    def cancelled(self, value: bool) -> None:
        for c in self.choices:
            c.cancelled = value

    def write_ready(self, protocol: ServerConnection, texts: list[bytes], frames: list[bytes]) -> None:
        """Each choice's output as far as the id's credit allows (a chunk of any choice spends it), in index order;
        after the last choice's end, the id's done."""
        for choice in self.choices:
            if not choice.finished:
                choice.next_seq = self.next_seq
                choice.write_ready(protocol, texts, frames)
                self.next_seq = choice.next_seq
        if not self.finished and not self.pending and all(c.finished for c in self.choices):
            self.finished = True
            ends = [choice_end(i, c.final, c.completion_tokens) for i, c in enumerate(self.choices)]
            texts.append(encode_server_message(choices_done(self.id, ends)))

    def sent(self) -> None:
        for c in self.choices:
            c.sent()


WsRequest = WsGeneration | WsChoices  # what the connection's request table holds per client id

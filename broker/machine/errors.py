"""The machine's typed refusals. A refused command changes nothing; its result is the error."""

from __future__ import annotations

from paxq.client.wire import ErrorCode


class MachineError(Exception):
    """A command the machine refuses: `code` is the wire's error code, `detail` any data
    the caller may act on (e.g. the offsets whose leases were lost)."""

    def __init__(self, code: ErrorCode, message: str, detail: object = None) -> None:
        super().__init__(code, message, detail)
        self.code = code
        self.message = message
        self.detail = detail

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MachineError) and (self.code, self.message, self.detail) == (
            other.code,
            other.message,
            other.detail,
        )

    def __hash__(self) -> int:
        return hash((self.code, self.message))

    def __repr__(self) -> str:
        return f"MachineError({self.code.name}, {self.message!r})"


def bad(message: str) -> MachineError:
    return MachineError(ErrorCode.BAD_REQUEST, message)

"""A TCP proxy on every node-to-node link of a test cluster, in a process of its own so that
forwarding never waits on the clients of the run.

Each link is one direction: node i dials `listen` to reach node j (peers keep one connection
per ordered pair, so `i>j` carries what i sends to j). Modes, set by a line `LINK MODE` on
stdin, answered `ok`:

- pass: forward bytes both ways;
- cut: close the link's connections and close every new one at once (a dead route: the
  dialer sees the connection end and dials again);
- blackhole: forward nothing and read nothing, on open connections and on new ones, until
  the link passes again; then the held bytes flow (a route that drops packets until it
  heals: TCP's send buffers fill and the stream resumes).

Run: `python proxy.py '{"0>1": [listen_port, target_port], ...}'`.
"""

from __future__ import annotations

import json
import sys

import trio

CHUNK_BYTES = 64 << 10
MODES = ("pass", "cut", "blackhole")


class Link:
    def __init__(self, name: str, listen: int, target: int) -> None:
        self.name = name
        self.listen = listen
        self.target = target
        self.mode = "pass"
        self.flowing = trio.Event()
        self.flowing.set()
        self.scopes: set[trio.CancelScope] = set()

    def set(self, mode: str) -> None:
        self.mode = mode
        if mode == "pass":
            self.flowing.set()
            return
        if self.flowing.is_set():
            self.flowing = trio.Event()
        if mode == "cut":
            for scope in self.scopes:
                scope.cancel()

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.listen, host="127.0.0.1")
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, downstream: trio.SocketStream) -> None:
        with trio.CancelScope() as scope:
            self.scopes.add(scope)
            try:
                if self.mode == "cut":
                    return
                await self.flowing.wait()
                if self.mode == "cut":
                    return
                upstream = await trio.open_tcp_stream("127.0.0.1", self.target)
                async with upstream, trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, downstream, upstream, nursery.cancel_scope)
                    nursery.start_soon(self._pump, upstream, downstream, nursery.cancel_scope)
            except OSError:
                pass
            finally:
                self.scopes.discard(scope)
                await downstream.aclose()

    async def _pump(self, src: trio.SocketStream, dst: trio.SocketStream, both) -> None:
        try:
            while True:
                await self.flowing.wait()
                data = await src.receive_some(CHUNK_BYTES)
                if not data:
                    break
                await self.flowing.wait()  # bytes read as the link went dark wait for it
                if self.mode == "cut":
                    break
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        both.cancel()


async def main(spec: dict[str, list[int]]) -> None:
    links = {name: Link(name, listen, target) for name, (listen, target) in spec.items()}
    async with trio.open_nursery() as nursery:
        for link in links.values():
            await nursery.start(link.serve)
        print("ready", flush=True)
        stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
        buffered = b""
        while True:
            data = await stdin.receive_some(4096)
            if not data:
                nursery.cancel_scope.cancel()
                return
            buffered += data
            while b"\n" in buffered:
                line, buffered = buffered.split(b"\n", 1)
                name, mode = line.decode().split()
                if name not in links or mode not in MODES:
                    print(f"error: no link {name!r} or mode {mode!r}", flush=True)
                    continue
                links[name].set(mode)
                print("ok", flush=True)


if __name__ == "__main__":
    trio.run(main, json.loads(sys.argv[1]))

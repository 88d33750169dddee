"""Hand-written SMTP servers for behaviour aiosmtpd will not produce, shared by the tests."""

from __future__ import annotations

import asyncio


class RawServer:
    """A hand-written SMTP server for behaviour aiosmtpd will not produce.

    mode "silent": accepts TCP and never says anything.
    Recipients starting "drop" make it close the connection in the middle of DATA;
    "bye" gets "421 4.3.2 shutting down" and the connection closed; "unknown" gets 550 5.1.1 and
    "full" 452 4.2.2. With ``pipelining`` it offers PIPELINING (RFC 2920): it reads one command
    line at a time and answers in order, so pipelined commands simply arrive before their turn.
    """

    def __init__(
        self, mode: str = "normal", data_delay: float = 0.0, *, pipelining: bool = False
    ) -> None:
        self.mode = mode
        self.pipelining = pipelining
        self.data_delay = data_delay
        self.connections = 0
        self.active = 0
        self.max_active = 0
        self.delivered: list[str] = []
        self.data: list[bytes] = []  # each accepted message's DATA section as it came, stuffed
        self.server: asyncio.Server | None = None
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self._writers):
            w.close()
        await self.server.wait_closed()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self._writers.add(writer)
        try:
            await self._session(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.active -= 1
            self._writers.discard(writer)
            writer.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "silent":
            await reader.read()
            return
        writer.write(b"220 raw.test ESMTP\r\n")
        rcpt = ""
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                offers = b"250-PIPELINING\r\n" if self.pipelining else b""
                writer.write(b"250-raw.test\r\n" + offers + b"250 8BITMIME\r\n")
            elif verb == b"MAIL":
                writer.write(b"250 2.1.0 Ok\r\n")
            elif verb == b"RCPT":
                rcpt = line.decode().split("<", 1)[1].split(">", 1)[0]
                if rcpt.startswith("bye"):
                    writer.write(b"421 4.3.2 raw.test shutting down\r\n")
                    await writer.drain()
                    return
                if rcpt.startswith("unknown"):
                    writer.write(b"550 5.1.1 <" + rcpt.encode() + b">: User unknown\r\n")
                    rcpt = ""
                elif rcpt.startswith("full"):
                    writer.write(b"452 4.2.2 <" + rcpt.encode() + b">: Mailbox full\r\n")
                    rcpt = ""
                else:
                    writer.write(b"250 2.1.5 Ok\r\n")
            elif verb == b"DATA" and not rcpt:
                writer.write(b"554 5.5.1 Error: no valid recipients\r\n")
            elif verb == b"DATA":
                writer.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                await writer.drain()
                if rcpt.startswith("drop"):
                    await reader.readline()  # one line of the message, then hang up
                    return
                lines = []
                while (data_line := await reader.readline()) != b".\r\n":
                    lines.append(data_line)
                self.data.append(b"".join(lines))
                if self.data_delay:
                    await asyncio.sleep(self.data_delay)
                self.delivered.append(rcpt)
                writer.write(b"250 2.0.0 Ok: queued\r\n")
            elif verb == b"RSET":
                writer.write(b"250 2.0.0 Ok\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 2.0.0 Bye\r\n")
                await writer.drain()
                return
            else:
                writer.write(b"502 5.5.2 Error: command not recognized\r\n")
            await writer.drain()

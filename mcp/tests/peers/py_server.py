"""MCP server on the Python SDK (`mcp` 2.x), used by the denizen-mcp tests.

Usage: py_server.py PORT [streamable-http|sse]. Binds 127.0.0.1 only. Speaks both protocol eras
on Streamable HTTP (2025-11-25 `initialize` and 2026-07-28 stateless)."""
import sys

from mcp.server.mcpserver import Context, MCPServer

port = int(sys.argv[1])
transport = sys.argv[2] if len(sys.argv) > 2 else "streamable-http"
server = MCPServer("denizen-test-peer")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def analyze(text: str) -> str:
    """Count the words of a text (a name other servers use too)."""
    return f"{len(text.split())} words"


@server.tool()
def fail(reason: str) -> str:
    """Always fails: the result carries isError."""
    raise ValueError(reason)


def extra(x: int) -> int:
    """A tool that appears when `grow` is called."""
    return x * 2


@server.tool()
async def grow(ctx: Context) -> str:
    """Adds the tool `extra` and tells the client its tool list changed."""
    server.add_tool(extra)
    if ctx.protocol_version == "2026-07-28":
        # Stateless era: to `subscriptions/listen` streams.
        await ctx.notify_tools_changed()
    else:
        # Session era: on the session's standalone stream.
        await ctx.session.send_tool_list_changed()
    return "grown"


@server.resource("peer://static")
def static() -> str:
    """A static resource."""
    return "static content"


@server.resource("peer://greeting/{name}")
def greeting(name: str) -> str:
    """A templated resource."""
    return f"Hello, {name}!"


@server.prompt()
def review(code: str) -> str:
    """A prompt with one argument."""
    return f"Please review:\n{code}"


print(f"denizen-test-peer starting on port {port}", flush=True)
server.run(transport, host="127.0.0.1", port=port)

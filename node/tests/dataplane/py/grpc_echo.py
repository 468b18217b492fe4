"""A gRPC service and its client, with Python's grpcio, for the h2c test.

    grpc_echo.py serve PORT          # the service, on 127.0.0.1:PORT (plain HTTP/2)
    grpc_echo.py call TARGET AUTHORITY [CA_PEM]
                                     # unary and bidirectional calls through TARGET (ip:port),
                                     # as AUTHORITY, over TLS when CA_PEM is given; prints JSON

No generated code: the methods take and give raw bytes (generic handlers).
"""
import json
import sys
from concurrent import futures

import grpc

SAY = "/echo.Echo/Say"
CHAT = "/echo.Echo/Chat"


def say(request, context):
    context.set_trailing_metadata((("x-echo-trailer", "kept"),))
    return b"said:" + request


def chat(requests, context):
    for i, r in enumerate(requests):
        yield b"%d:" % i + r
    context.set_trailing_metadata((("x-echo-count", "done"),))


def serve(port):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handlers = {
        "Say": grpc.unary_unary_rpc_method_handler(say),
        "Chat": grpc.stream_stream_rpc_method_handler(chat),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("echo.Echo", handlers),))
    server.add_insecure_port("127.0.0.1:%d" % port)
    server.start()
    print("serving", flush=True)
    server.wait_for_termination()


def call(target, authority, ca=None):
    options = [("grpc.default_authority", authority)]
    if ca:
        creds = grpc.ssl_channel_credentials(root_certificates=open(ca, "rb").read())
        options.append(("grpc.ssl_target_name_override", authority))
        channel = grpc.secure_channel(target, creds, options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    out = {}
    unary = channel.unary_unary(SAY)
    reply, c = unary.with_call(b"hello", timeout=10)
    out["unary"] = reply.decode()
    out["unary_trailers"] = dict(c.trailing_metadata())
    out["unary_code"] = str(c.code())
    stream = channel.stream_stream(CHAT)
    # Full duplex: each answer is read before the next message is sent.
    import queue
    q = queue.Queue()

    def messages():
        for m in [b"a", b"b", b"c"]:
            yield m
            q.get(timeout=10)

    call = stream(messages(), timeout=10)
    got = []
    for r in call:
        got.append(r.decode())
        q.put(None)
    out["stream"] = got
    out["stream_trailers"] = dict(call.trailing_metadata())
    out["stream_code"] = str(call.code())
    # A method the service lacks: its status comes back in the trailers.
    try:
        channel.unary_unary("/echo.Echo/Missing")(b"x", timeout=10)
        out["missing"] = "answered"
    except grpc.RpcError as e:
        out["missing"] = str(e.code())
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    else:
        call(*sys.argv[2:])

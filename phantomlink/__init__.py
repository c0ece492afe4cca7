"""phantomlink: a client for decoder writers. Control PhantomLink sessions over REST, stream a
session (WebSocket or ZeroMQ) as numpy packets, send predictions back, and evaluate a decoder
written to FALCON's interface against the server's ground truth.

    import phantomlink
    result = phantomlink.evaluate(my_decoder, url="http://127.0.0.1:8000")
    print(result["evaluation"]["velocity_r2"])
"""
from phantomlink.aio import AsyncWebSocketStream, AsyncZmqStream
from phantomlink.decoder import Decoder
from phantomlink.evaluate import aevaluate, evaluate
from phantomlink.packets import Metadata, Packet, SequenceCheck
from phantomlink.predictions import prediction
from phantomlink.rest import AsyncClient, Client, PhantomLinkError
from phantomlink.streams import WebSocketStream, ZmqStream, stream_url

__all__ = ["AsyncClient", "AsyncWebSocketStream", "AsyncZmqStream", "Client", "Decoder",
           "Metadata", "Packet", "PhantomLinkError", "SequenceCheck", "WebSocketStream",
           "ZmqStream", "aevaluate", "evaluate", "prediction", "stream_url"]

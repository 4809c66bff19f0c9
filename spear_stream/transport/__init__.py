"""Worker -> learner transport: consolidated TensorDict frames over ZeroMQ with credit flow control.

Modules: ``codec`` (group <-> frames, validation), ``common`` (protocol overview and what both ends share),
``sender`` (worker side, :class:`RolloutSender`) and ``receiver`` (learner side, :class:`RolloutReceiver`).
"""

from spear_stream.transport.codec import DecodeError, decode_group, encode_group, parse_header
from spear_stream.transport.common import WeightsAnnouncement
from spear_stream.transport.receiver import ReceivedGroup, RolloutReceiver
from spear_stream.transport.sender import ChannelStopped, CreditTimeout, RolloutSender, TransportError

__all__ = [
    "ChannelStopped",
    "CreditTimeout",
    "DecodeError",
    "ReceivedGroup",
    "RolloutReceiver",
    "RolloutSender",
    "TransportError",
    "WeightsAnnouncement",
    "decode_group",
    "encode_group",
    "parse_header",
]

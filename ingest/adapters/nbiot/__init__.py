"""NB-IoT operator platform push (OceanConnect / IoTDA, CTWing): the pure codec.

The HTTP endpoint that receives the pushes is the API's (``citybrain/routes/webhook.py``).
"""

from ingest.adapters.nbiot.codec import PLATFORMS, Push, PushMessage, decode, raw_messages, topic

__all__ = ["PLATFORMS", "Push", "PushMessage", "decode", "raw_messages", "topic"]

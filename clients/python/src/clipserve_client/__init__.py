"""clipserve's Python client: CLIP embeddings, scores, zero-shot and search from a clipserve deployment.

    from clipserve_client import Client
    with Client("https://clip.example.com", api_key="...") as clip:
        vectors = clip.embed_image(["cat.jpg", "https://example.com/dog.jpg"], progress=True).vectors

``AsyncClient`` has the same methods for asyncio; ``CompatService`` gives the older service-class names
(``encode_text``, ``encode_batch_images``, ``compute_similarity``, ...). The server package offers the same
interface in process (``handler.local.local_client``), so code moves between local and remote by changing one
constructor.
"""

from clipserve_client._async import AsyncClient
from clipserve_client._core import Limits, RetryPolicy, UnexpectedAnswer
from clipserve_client._sync import Client
from clipserve_client.auth import AwsSigV4, BearerToken, GoogleIdToken, MissingDependency
from clipserve_client.compat import CompatService
from clipserve_client.errors import (ClipserveError, ConnectionFailed, InvalidInput, ItemError, ItemsFailed,
                                     ModelLoading, NotFound, Overloaded, RateLimited, ServerError,
                                     ServiceUnavailable, Timeout, Unauthorized, UnknownModel)
from clipserve_client.images import Encoded
from clipserve_client.results import Embeddings, Hit, MixedEmbeddings, Scores, Written, ZeroShot

__all__ = [
    "AsyncClient", "AwsSigV4", "BearerToken", "Client", "ClipserveError", "CompatService", "ConnectionFailed",
    "Embeddings", "Encoded", "GoogleIdToken", "Hit", "InvalidInput", "ItemError", "ItemsFailed", "Limits",
    "MissingDependency", "MixedEmbeddings", "ModelLoading", "NotFound", "Overloaded", "RateLimited", "RetryPolicy",
    "Scores", "ServerError", "ServiceUnavailable", "Timeout", "Unauthorized", "UnexpectedAnswer", "UnknownModel",
    "Written", "ZeroShot",
]

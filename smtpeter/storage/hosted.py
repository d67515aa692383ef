"""Hosted images: the embedded images of a message sent with ``images: hosted``, one row each.

The rows are the images decoded, by their message and position (the order in
which ``smtpeter.outbound.hosted_images`` finds them), so a hosted image is one
row read on any node that shares the database. They go with their message:
deleting the message deletes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from smtpeter.storage.db import Insert, Tables
from smtpeter.storage.keys import check_id


@dataclass(frozen=True)
class HostedImage:
    position: int
    content_type: str
    data: bytes


class HostedImages(Tables):
    async def store_hosted_images(self, message_id: str, images: Sequence[HostedImage]) -> None:
        """Keep ``images`` of stored message ``message_id``; an image already kept stays as it is
        (another node may have stored the same rows meanwhile)."""
        if not images:
            return
        now = self.now()
        rows = [(message_id, image.position, image.content_type, self.db.blob(image.data), len(image.data),
                 now) for image in images]
        await self.db.transaction([Insert(
            "hosted_images", ("message_id", "position", "content_type", "data", "size", "created"), rows,
            suffix="ON CONFLICT (message_id, position) DO NOTHING")])

    async def hosted_image(self, message_id: str, position: int) -> HostedImage | None:
        check_id(message_id)
        rows = await self.db.query(
            "SELECT position, content_type, data FROM hosted_images WHERE message_id = ? AND position = ?",
            (message_id, position))
        if not rows:
            return None
        return HostedImage(rows[0][0], rows[0][1], bytes(rows[0][2]))

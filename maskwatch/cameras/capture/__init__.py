"""Capture: reading one frame per tick from a camera, whatever its kind, within the camera's own deadline.

``fetcher`` runs a batch of ticks at once and keeps cameras apart (deadlines, back-off); each kind of
source has its own module: ``snapshot`` (HTTP/HTTPS snapshot URLs, httpx), ``rtsp`` (RTSP streams held
open, PyAV), ``files`` (``file://`` images, directories and videos). Nothing here knows of models.
"""

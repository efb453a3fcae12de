"""GStreamer's RTSP server on loopback, for the RTSP tests and the cameras benchmark.

Debian's ``gir1.2-gst-rtsp-server-1.0`` driven from Debian's ``python3`` through ``python3-gi`` (``bin/dev
test`` installs them; x264enc is in ``gstreamer1.0-plugins-ugly``). Two mounts, both behind RTSP Basic
auth: ``/live`` loops JPEG files as RTP/JPEG, ``/h264`` sends H.264 1280x720 at 25 fps with a keyframe a
second from one encoder shared by every client (what IP cameras send; the server's cost does not grow
with the clients).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, where python3-gi lives (not the project's venv)
USER, PASSWORD = "alice", "Rt5p-s3cret-Pw"
H264_MOUNT = "/h264"
SCENE_MOUNT = "/h264-scene"  # only when start_server is given a scene photo

# Run by Debian's python3: serve a loop of JPEG files at rtsp://127.0.0.1:PORT/live and H.264 720p at /h264
# to USER:PASSWORD; print "ready" once listening and "client" for every RTSP client connection accepted.
SERVER = r"""
import sys
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer

Gst.init(None)
port, pattern, user, password, *rest = sys.argv[1:]
scene = rest[0] if rest else ""
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(f'( multifilesrc location="{pattern}" loop=true caps="image/jpeg,framerate=10/1" '
                   '! jpegparse ! rtpjpegpay name=pay0 pt=26 )')
factory.set_shared(True)
token = GstRtspServer.RTSPToken()
token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "viewer")
auth = GstRtspServer.RTSPAuth()
auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
server.set_auth(auth)
perms = GstRtspServer.RTSPPermissions()
for perm in (GstRtspServer.RTSP_PERM_MEDIA_FACTORY_ACCESS, GstRtspServer.RTSP_PERM_MEDIA_FACTORY_CONSTRUCT):
    perms.add_permission_for_role("viewer", perm, True)
factory.set_permissions(perms)
server.get_mount_points().add_factory("/live", factory)
# H.264 at 1280x720, 25 fps, a keyframe a second: what IP cameras send (the scene, a ball moving over a
# plain background, is cheaper to decode than a real one). One encoder shared by every client.
h264 = GstRtspServer.RTSPMediaFactory()
h264.set_launch('( videotestsrc is-live=true pattern=ball ! video/x-raw,width=1280,height=720,framerate=25/1 '
                '! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=25 bitrate=2000 '
                '! rtph264pay name=pay0 pt=96 config-interval=-1 )')
h264.set_shared(True)
h264.set_permissions(perms)
server.get_mount_points().add_factory("/h264", h264)
# The same, of a real scene: a photo with sensor-like noise (about what a camera's picture carries), so the
# encoder spends its 2 Mbit/s as on a real camera and a decoder has as much to do.
if scene:
    real = GstRtspServer.RTSPMediaFactory()
    real.set_launch(
        f'( compositor name=mix sink_1::alpha=0.12 ! video/x-raw,width=1280,height=720,framerate=25/1 '
        '! videoconvert ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=25 bitrate=2000 '
        '! rtph264pay name=pay0 pt=96 config-interval=-1 '
        f'multifilesrc location="{scene}" loop=true caps="image/jpeg,framerate=1/1" ! jpegdec '
        '! videoconvert ! videoscale ! video/x-raw,width=1280,height=720 ! videorate '
        '! video/x-raw,framerate=25/1 ! mix.sink_0 '
        'videotestsrc is-live=true pattern=snow ! video/x-raw,width=1280,height=720,framerate=25/1 '
        '! mix.sink_1 )')
    real.set_shared(True)
    real.set_permissions(perms)
    server.get_mount_points().add_factory("/h264-scene", real)
server.connect("client-connected", lambda *_: print("client", flush=True))
if server.attach(None) == 0:
    sys.exit(f"cannot listen on 127.0.0.1:{port}")
print("ready", flush=True)
GLib.MainLoop().run()
"""



@dataclass
class Server:
    port: int
    proc: subprocess.Popen[str]


def start_server(pattern: str | None = None, timeout_s: float = 15.0, scene: str = "") -> Server:
    """Start the server on a free port; ``pattern`` names the JPEG frames of ``/live`` (default: one grey
    frame in a temporary folder); ``scene``, a JPEG photo, adds ``/h264-scene``."""
    from maskwatch.ports import free_port

    if pattern is None:
        folder = Path(tempfile.mkdtemp(prefix="rtsp-frames-"))
        cv2.imwrite(str(folder / "frame000.jpg"), np.full((240, 320, 3), 128, np.uint8))
        pattern = str(folder / "frame%03d.jpg")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    proc = subprocess.Popen([SYSTEM_PYTHON, "-c", SERVER, str(port), pattern, USER, PASSWORD, scene],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    for line in proc.stdout:
        if line.strip() == "ready":
            return Server(port, proc)
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise RuntimeError(f"the RTSP server did not start: {proc.stderr.read() if proc.stderr else ''}")


def stop_server(server: Server) -> None:
    server.proc.kill()
    server.proc.wait(timeout=10)

"""Benchmark: how fast the correction recorder's MCAP writer takes images (CPU, one thread).

Serialized ``sensor_msgs/Image`` messages (``rgb8``, a camera-sized frame with the coarse
colour statistics of a real scene, so that zstd has something to do) written through
:class:`ws_ros.mcap_io.RecordingWriter` at several chunk sizes, summary and ``fsync``
included. Prints one JSON object; asserts nothing. A camera at 30 Hz with colour and depth
needs about 60 images/s.

    .venv/bin/python bench/bench_recorder.py --width 640 --height 480 --images 200
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--chunks", default="262144,1048576,4194304", help="chunk sizes to try, bytes")
    args = ap.parse_args()
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Image

    from ws_ros.mcap_io import RecordingWriter

    rng = np.random.default_rng(0)
    img = (rng.integers(0, 256, (args.height, args.width, 3)) // 32 * 32).astype(np.uint8)
    data = serialize_message(Image(height=args.height, width=args.width, encoding="rgb8", step=3 * args.width,
                                   data=img.tobytes()))
    out = {"image": f"{args.width}x{args.height} rgb8", "bytes_per_message": len(data), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for chunk in (int(c) for c in args.chunks.split(",")):
            path = os.path.join(tmp, f"bench_{chunk}.mcap")
            t0 = time.perf_counter()
            w = RecordingWriter(path, chunk_size=chunk)
            w.add_topic("/camera/color/image_raw", "sensor_msgs/msg/Image", [])
            for i in range(args.images):
                w.write("/camera/color/image_raw", data, i)
            w.close()
            dt = time.perf_counter() - t0
            out["runs"].append({"chunk_size": chunk, "images_per_s": round(args.images / dt, 1),
                                "mb_per_s": round(args.images * len(data) / dt / 1e6, 1),
                                "file_over_raw": round(os.path.getsize(path) / (args.images * len(data)), 3)})
    print(json.dumps(out))


if __name__ == "__main__":
    main()

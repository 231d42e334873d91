"""The Python reference for the cameras-per-box benchmark: one process per
stream, as such pipelines are usually deployed. It reads the video paced in
real time (as a camera delivers it), and at --fps runs the full face path on
every frame (YuNet, alignment, SFace, the MiniFASNet pair, 1:N matching),
with the functions and ONNX Runtime settings of face_reference.py (no
spinning). A gate decision needs 3 agreeing frames of the last 5, as
gatewarden's default; its latency is counted from the capture of the first
analysed frame in which the face was seen. Prints one JSON line.

    python3 deploy/bench/cameras_reference.py --models models --video cam0.mp4 --enrol R0=img1.jpg
"""
import argparse, json, os, resource, sys, time
import numpy as np
import cv2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import face_reference as ref  # noqa: E402


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--models", default="models")
    a.add_argument("--video", required=True)
    a.add_argument("--fps", type=float, default=5.0)
    a.add_argument("--threads", type=int, default=2)
    a.add_argument("--enrol", action="append", default=[], help="ID=photo.jpg")
    o = a.parse_args()
    ref.SPIN = False
    det = ref.session(f"{o.models}/face_detection_yunet_2023mar.onnx", o.threads)
    emb = ref.session(f"{o.models}/face_recognition_sface_2021dec.onnx", o.threads)
    v2 = ref.session(f"{o.models}/2.7_80x80_MiniFASNetV2.onnx", o.threads)
    v1 = ref.session(f"{o.models}/4_0_0_80x80_MiniFASNetV1SE.onnx", o.threads)

    def embed(img, lm):
        a_ = ref.align(img, lm)
        e = emb.run(None, {"data": cv2.cvtColor(a_, cv2.COLOR_BGR2RGB).transpose(2, 0, 1)[None].astype(np.float32)})[0][0]
        return e / np.linalg.norm(e)

    ids, gallery = [], []
    for spec in o.enrol:
        pid, path = spec.split("=", 1)
        img = cv2.imread(path)
        _, _, lm = max(ref.detect(det, img), key=lambda f: f[1][2] * f[1][3])
        ids.append(pid)
        gallery.append(embed(img, lm))
    gallery = np.array(gallery, np.float32)

    cap = cv2.VideoCapture(o.video)
    pace = 1.0 / (cap.get(cv2.CAP_PROP_FPS) or 10.0)
    every = 1.0 / o.fps
    frames = analysed = 0
    votes, latencies, last_open = [], [], {}
    episode = None  # capture time of the first analysed frame showing a face
    t_start = time.monotonic()
    cpu0 = time.process_time()
    next_frame = last_run = time.monotonic() - every
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frames += 1
        captured = time.monotonic()
        if captured - last_run >= every:
            last_run = captured
            analysed += 1
            faces = ref.detect(det, img)
            if not faces:
                episode = None
                votes.clear()
            else:
                _, box, lm = max(faces, key=lambda f: f[1][2] * f[1][3])
                episode = episode or captured
                e = embed(img, lm)
                p = [ref.softmax(s.run(None, {"input": ref.crop(img, box, sc).transpose(2, 0, 1)[None].astype(np.float32)})[0][0]) for s, sc in ((v2, 2.7), (v1, 4.0))]
                live = (p[0][1] + p[1][1]) / 2
                scores = gallery @ e
                best = int(np.argmax(scores))
                vote = ids[best] if scores[best] >= 0.363 and live >= 0.5 else None
                votes = (votes + [vote])[-5:]
                if vote and votes.count(vote) >= 3 and time.monotonic() - last_open.get(vote, -1e9) >= 5.0:
                    last_open[vote] = time.monotonic()
                    latencies.append(round((time.monotonic() - episode) * 1000, 1))
                    votes.clear()
        next_frame += pace
        d = next_frame - time.monotonic()
        if d > 0:
            time.sleep(d)
    print("JSON " + json.dumps({
        "frames": frames, "analysed": analysed, "latencies_ms": latencies,
        "cpu_s": round(time.process_time() - cpu0, 3), "wall_s": round(time.monotonic() - t_start, 3),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))


if __name__ == "__main__":
    main()

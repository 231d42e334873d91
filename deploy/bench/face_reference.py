"""The Python reference pipeline for the face benchmark: opencv-python-headless
plus onnxruntime, with the same models, the same preprocessing and the same
frame as gatewarden-bench-face. Prints the same JSON line.

    python3 deploy/bench/face_reference.py --models models --frame frame.jpg --iters 100 --threads 2
"""
import argparse, json, time
import numpy as np
import cv2
import onnxruntime as ort

TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)

SPIN = True

def session(path, threads):
    o = ort.SessionOptions()
    if not SPIN:
        o.add_session_config_entry("session.intra_op.allow_spinning", "0")
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    o.intra_op_num_threads = threads
    return ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])

def detect(sess, img):
    h, w = img.shape[:2]
    s = 640 / max(h, w)
    r = cv2.resize(img, (round(w * s), round(h * s)))
    canvas = np.zeros((640, 640, 3), np.uint8)
    canvas[: r.shape[0], : r.shape[1]] = r
    blob = canvas.transpose(2, 0, 1)[None].astype(np.float32)
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": blob})))
    faces = []
    for st in (8, 16, 32):
        cls, obj, box, kps = (out[f"{k}_{st}"][0] for k in ("cls", "obj", "bbox", "kps"))
        score = np.sqrt(np.clip(cls[:, 0], 0, 1) * np.clip(obj[:, 0], 0, 1))
        cols = 640 // st
        for i in np.where(score >= 0.6)[0]:
            r_, c_ = divmod(i, cols)
            cx, cy = (c_ + box[i, 0]) * st, (r_ + box[i, 1]) * st
            bw, bh = np.exp(box[i, 2]) * st, np.exp(box[i, 3]) * st
            lm = np.array([[(kps[i, 2 * n] + c_) * st, (kps[i, 2 * n + 1] + r_) * st] for n in range(5)]) / s
            faces.append((score[i], np.array([cx - bw / 2, cy - bh / 2, bw, bh]) / s, lm))
    if not faces:
        return []
    boxes = [f[1].tolist() for f in faces]
    keep = cv2.dnn.NMSBoxes(boxes, [float(f[0]) for f in faces], 0.6, 0.3)
    return [faces[i] for i in np.array(keep).flatten()]

def align(img, lm):
    m, _ = cv2.estimateAffinePartial2D(lm.astype(np.float32), TEMPLATE, method=cv2.LMEDS)
    return cv2.warpAffine(img, m, (112, 112))

def crop(img, box, scale):
    h, w = img.shape[:2]
    x, y, bw, bh = box
    scale = min((h - 1) / bh, (w - 1) / bw, scale)
    nw, nh = bw * scale, bh * scale
    cx, cy = x + bw / 2, y + bh / 2
    l, t, r, b = cx - nw / 2, cy - nh / 2, cx + nw / 2, cy + nh / 2
    if l < 0: r -= l; l = 0
    if t < 0: b -= t; t = 0
    if r > w - 1: l -= r - w + 1; r = w - 1
    if b > h - 1: t -= b - h + 1; b = h - 1
    return cv2.resize(img[int(max(t, 0)): int(b) + 1, int(max(l, 0)): int(r) + 1], (80, 80))

def softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()

def main():
    a = argparse.ArgumentParser()
    a.add_argument("--models", default="models")
    a.add_argument("--frame", required=True)
    a.add_argument("--iters", type=int, default=100)
    a.add_argument("--threads", type=int, default=2)
    a.add_argument("--no-spin", action="store_true", help="the same ONNX Runtime setting gatewarden uses")
    o = a.parse_args()
    global SPIN
    SPIN = not o.no_spin
    det = session(f"{o.models}/face_detection_yunet_2023mar.onnx", o.threads)
    emb = session(f"{o.models}/face_recognition_sface_2021dec.onnx", o.threads)
    v2 = session(f"{o.models}/2.7_80x80_MiniFASNetV2.onnx", o.threads)
    v1 = session(f"{o.models}/4_0_0_80x80_MiniFASNetV1SE.onnx", o.threads)
    jpeg = np.fromfile(o.frame, np.uint8)
    rng = np.random.default_rng(1)
    gallery = rng.uniform(-1, 1, (50_001, 128)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    totals, matches = [], []
    for _ in range(o.iters):
        t0 = time.perf_counter()
        img = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
        faces = detect(det, img)
        _, box, lm = faces[0]
        a_ = align(img, lm)
        e = emb.run(None, {"data": cv2.cvtColor(a_, cv2.COLOR_BGR2RGB).transpose(2, 0, 1)[None].astype(np.float32)})[0][0]
        e /= np.linalg.norm(e)
        p = [softmax(s.run(None, {"input": crop(img, box, sc).transpose(2, 0, 1)[None].astype(np.float32)})[0][0]) for s, sc in ((v2, 2.7), (v1, 4.0))]
        live = (p[0][1] + p[1][1]) / 2
        tm = time.perf_counter()
        best = int(np.argmax(gallery @ e))
        matches.append((time.perf_counter() - tm) * 1000)
        totals.append((time.perf_counter() - t0) * 1000)
        assert live >= 0 and best >= 0
    totals.sort(); matches.sort()
    q = lambda v, p: v[round((len(v) - 1) * p)]
    print("JSON " + json.dumps({"p50_ms": round(q(totals, .5), 2), "p95_ms": round(q(totals, .95), 2), "match_p50_ms": round(q(matches, .5), 3), "iters": o.iters, "threads": o.threads, "spinning": SPIN}))

if __name__ == "__main__":
    main()

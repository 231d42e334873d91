"""The Python reference for the plate benchmark: opencv-python-headless plus
onnxruntime, the same three models and preprocessing as gatewarden's
PlateReader, on the same 720p frame. Prints a JSON line.

    python3 deploy/bench/plate_reference.py --models models --frame frame.jpg --iters 100 [--no-spin]
"""
import argparse, json, time
import numpy as np
import cv2
import onnx
import onnxruntime as ort

PROV = "京津冀晋蒙辽吉黑沪苏浙皖闽赣鲁豫鄂湘粤桂琼渝川贵云藏陕甘青宁新"
ALPHA = set(PROV + "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789学警港澳挂使领")

def session(path, threads, spin):
    o = ort.SessionOptions()
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    o.intra_op_num_threads = threads
    o.log_severity_level = 3
    if not spin:
        o.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])

def main():
    a = argparse.ArgumentParser()
    a.add_argument("--models", default="models")
    a.add_argument("--frame", required=True)
    a.add_argument("--iters", type=int, default=100)
    a.add_argument("--threads", type=int, default=2)
    a.add_argument("--no-spin", action="store_true")
    o = a.parse_args()
    M = o.models + "/"
    det = session(M + "y5fu_320x_sim.onnx", o.threads, not o.no_spin)
    rec = session(M + "ch_PP-OCRv4_rec_infer.onnx", o.threads, not o.no_spin)
    cls = session(M + "litemodel_cls_96x_r1.onnx", o.threads, not o.no_spin)
    chars = [p.value for p in onnx.load(M + "ch_PP-OCRv4_rec_infer.onnx").metadata_props if p.key == "character"][0].split("\n")
    labels = ["blank"] + chars + [" "]
    allowed = np.array([i for i, c in enumerate(labels) if c in ALPHA or i == 0])

    def detect(img):
        h, w = img.shape[:2]; s = min(320 / h, 320 / w); nh, nw = int(round(h * s)), int(round(w * s))
        c = np.zeros((320, 320, 3), np.uint8); top = (320 - nh) // 2; left = (320 - nw) // 2
        c[top:top + nh, left:left + nw] = cv2.resize(img, (nw, nh))
        x = cv2.cvtColor(c, cv2.COLOR_BGR2RGB).transpose(2, 0, 1)[None].astype(np.float32) / 255
        out = det.run(None, {"input": x})[0][0]
        sc = out[:, 4:5] * out[:, 13:15]
        k = sc.argmax(1); score = sc.max(1)
        keep = score >= 0.5
        rows, k, score = out[keep], k[keep], score[keep]
        boxes = [[(r[0] - r[2] / 2 - left) / s, (r[1] - r[3] / 2 - top) / s, r[2] / s, r[3] / s] for r in rows]
        idx = np.array(cv2.dnn.NMSBoxes(boxes, score.tolist(), 0.5, 0.5)).flatten()
        return [(score[i], k[i], [((rows[i][5 + 2 * j] - left) / s, (rows[i][6 + 2 * j] - top) / s) for j in range(4)]) for i in idx]

    def warp(img, pts):
        pts = np.array(pts, np.float32)
        w = int(max(np.linalg.norm(pts[0] - pts[1]), np.linalg.norm(pts[3] - pts[2])))
        h = int(max(np.linalg.norm(pts[0] - pts[3]), np.linalg.norm(pts[1] - pts[2])))
        dst = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float32)
        return cv2.warpPerspective(img, cv2.getPerspectiveTransform(pts, dst), (w, h))

    def read(crop):
        h, w = crop.shape[:2]; nw = int(np.ceil(48 * w / h)); W = max(320, nw)
        r = (cv2.resize(crop, (nw, 48)).astype(np.float32) / 255 - 0.5) / 0.5
        x = np.zeros((1, 3, 48, W), np.float32); x[0, :, :, :nw] = r.transpose(2, 0, 1)
        p = rec.run(None, {"x": x})[0][0][:, allowed]
        idx = allowed[p.argmax(1)]
        out, prev = [], 0
        for i in idx:
            if i != prev and i != 0: out.append(labels[i])
            prev = i
        return "".join(out)

    def colour(crop):
        x = cv2.resize(crop, (96, 96)).transpose(2, 0, 1)[None].astype(np.float32) / 255
        return int(np.argmax(cls.run(None, {"data": x})[0][0]))

    img = cv2.imdecode(np.fromfile(o.frame, np.uint8), cv2.IMREAD_COLOR)
    ts = []
    text = ""
    for _ in range(o.iters):
        t0 = time.perf_counter()
        for score, k, pts in detect(img):
            crop = warp(img, pts)
            if k == 1:
                sp = int(crop.shape[0] * 0.4); text = read(crop[:sp]) + read(crop[sp:])
            else:
                text = read(crop)
            colour(crop)
        ts.append((time.perf_counter() - t0) * 1000)
    ts.sort()
    q = lambda p: ts[round((len(ts) - 1) * p)]
    print("JSON " + json.dumps({"plate": text, "p50_ms": round(q(.5), 2), "p95_ms": round(q(.95), 2), "iters": o.iters, "spinning": not o.no_spin}, ensure_ascii=False))

main()

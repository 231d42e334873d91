// gatewarden console: a small front end over /api/v1 (the same API as the CLI).
// No build step. Every value from the server is put in the page as text, never
// as HTML, because names and notes are typed by people.
"use strict";

const $ = (sel) => document.querySelector(sel);
let me = null;

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v === true) el.setAttribute(k, "");
    else if (v !== false && v != null) el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

async function api(method, path, body) {
  const r = await fetch("/api/v1" + path, {
    method,
    headers: body ? { "content-type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
    credentials: "same-origin",
  });
  if (r.status === 401) { showLogin(); throw new Error("请重新登录 / please log in"); }
  const ct = r.headers.get("content-type") || "";
  const data = ct.includes("json") ? await r.json() : await r.text();
  if (!r.ok) throw new Error((data && data.error) || `HTTP ${r.status}`);
  return data;
}

const when = (t) => (t ? new Date(t).toLocaleString("zh-CN", { hour12: false }) : "—");
const hours = (x) => (x == null ? "—" : x < 1 ? `${Math.round(x * 60)} 分钟` : x < 48 ? `${x.toFixed(1)} 小时` : `${(x / 24).toFixed(1)} 天`);
function table(headers, rows, cls) {
  return h("table", { class: "responsive " + (cls || "") },
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))),
    h("tbody", {}, rows.map((r) => h("tr", r.attrs || {}, r.cells.map((c, i) => h("td", { "data-label": headers[i] }, c))))));
}
function form(fields, submit, onsubmit) {
  const err = h("p", { class: "error", role: "alert" });
  const f = h("form", { class: "card" }, fields, h("button", { type: "submit" }, submit), err);
  f.addEventListener("submit", async (e) => {
    e.preventDefault();
    err.textContent = "";
    const btn = f.querySelector("button[type=submit]");
    btn.disabled = true;
    try { await onsubmit(new FormData(f), f); } catch (x) { err.textContent = x.message; } finally { btn.disabled = false; }
  });
  return f;
}
const field = (label, name, attrs) => h("label", {}, label, h("input", Object.assign({ name }, attrs || {})));
const fileB64 = (file) => new Promise((ok, bad) => {
  const r = new FileReader();
  r.onload = () => ok(String(r.result).split(",")[1]);
  r.onerror = () => bad(new Error("无法读取照片"));
  r.readAsDataURL(file);
});

// ---- pages ----

const pages = {
  async presence(page) {
    const rows = await api("GET", "/presence");
    page.append(h("h1", {}, "老人在位情况"), h("p", {}, "按未出现时长排序。超过本人时限为红色，超过一半为黄色（默认 " + me.absence_after_hours + " 小时）。"));
    page.append(table(["", "老人", "住址", "网格", "最后出现", "地点", "未出现"], rows.map((r) => {
      const limit = r.absence_after_hours || me.absence_after_hours;
      const cls = r.on_leave ? "leave" : r.unseen_hours >= limit ? "absent" : r.unseen_hours >= limit / 2 ? "stale" : "fresh";
      return { attrs: { class: cls, "data-elder": r.elder }, cells: [h("span", { class: "dot" }), `${r.name}（${r.elder}）`, r.address, r.grid, when(r.last_seen), r.place || "—", r.on_leave ? "请假中" : hours(r.unseen_hours)] };
    })));
  },

  async gateways(page) {
    const rows = await api("GET", "/gateways");
    page.append(h("h1", {}, "蓝牙网关"));
    if (!rows.length) page.append(h("p", {}, "还没有收到任何网关的消息。"));
    page.append(table(["名称", "标识", "最后收到", "状态"], rows.map((g) => ({
      attrs: { "data-gateway": g.id, class: g.offline ? "absent" : "fresh" },
      cells: [g.name, g.id, g.last_heard ? when(g.last_heard) : "从未", g.offline ? "离线" : "在线"],
    }))));
  },

  async alerts(page) {
    const rows = await api("GET", "/alerts");
    const names = Object.fromEntries((await api("GET", "/gateways")).map((g) => [g.id, g.name]));
    page.append(h("h1", {}, "未关闭的告警"));
    if (!rows.length) page.append(h("p", { class: "ok" }, "没有未关闭的告警。"));
    page.append(table(["编号", "类型", "对象", "状态", "开始", "确认"], rows.map((a) => ({
      attrs: { "data-alert": a.id },
      cells: [a.id, a.kind, a.subject && (names[a.subject.id] || a.subject.id), a.state, when(a.opened_at),
        a.state === "firing"
          ? h("button", { onclick: async (e) => { e.target.disabled = true; try { await api("POST", `/alerts/${a.id}/ack`, { by: me.user }); route(); } catch (x) { alert(x.message); e.target.disabled = false; } } }, "确认")
          : `${a.acked_by || ""} ${when(a.acked_at)}`],
    }))));
  },

  async residents(page) {
    const people = (await api("GET", "/people")).filter((p) => p.kind !== "visitor");
    page.append(h("h1", {}, "住户"));
    const noWay = people.filter((p) => p.kind === "resident" && !p.pin && !p.cards);
    if (noWay.length) page.append(h("p", { class: "error" }, `没有人脸以外通行方式的住户：${noWay.map((p) => p.name).join("、")}（法律要求人脸不能是唯一方式）`));
    if (me.role === "admin") {
      const verdict = h("p", { id: "photo-verdict", role: "status" });
      const photo = h("input", { name: "photo", type: "file", accept: "image/jpeg,image/png" });
      photo.addEventListener("change", async () => {
        verdict.textContent = "正在检查照片…"; verdict.className = "";
        if (!photo.files[0]) { verdict.textContent = ""; return; }
        try {
          const v = await api("POST", "/photos/check", { photo: await fileB64(photo.files[0]) });
          verdict.textContent = v.message; verdict.className = v.ok ? "ok" : "error";
        } catch (x) { verdict.textContent = x.message; verdict.className = "error"; }
      });
      page.append(form([h("h2", {}, "登记住户"),
        h("div", { class: "row" }, field("姓名", "name", { required: true }), field("编号（可选）", "id"), field("房号", "unit", { placeholder: "3-401" })),
        h("div", { class: "row" }, field("PIN（4–8 位数字）", "pin", { inputmode: "numeric" }), field("门卡号", "card")),
        h("label", {}, "人脸照片（可选）", photo), verdict,
        h("div", { class: "row" }, field("同意人（有照片时必填）", "consent_by"), field("同意方式", "consent_how", { placeholder: "纸质同意书" }))],
      "登记", async (fd, f) => {
        const body = { name: fd.get("name"), unit: fd.get("unit") || "" };
        if (fd.get("id")) body.id = fd.get("id");
        if (fd.get("pin")) body.pin = fd.get("pin");
        if (fd.get("card")) body.cards = [fd.get("card")];
        if (photo.files[0]) {
          body.photos = [await fileB64(photo.files[0])];
          body.consent = { by: fd.get("consent_by"), how: fd.get("consent_how") };
        }
        const r = await api("POST", "/residents", body);
        f.reset(); verdict.textContent = `已登记 ${r.id}`; verdict.className = "ok";
        route();
      }));
    }
    page.append(table(["编号", "姓名", "房号", "人脸", "PIN", "门卡", "同意记录"], people.map((p) => ({
      attrs: { "data-person": p.id },
      cells: [p.id, p.name, p.unit, p.faces ? "✓" : "—", p.pin ? "✓" : "—", p.cards || "—", p.consent ? `${p.consent.by} · ${p.consent.how}` : "—"],
    }))));
  },

  async visitors(page) {
    page.append(h("h1", {}, "访客"));
    const pass = h("div", { id: "pass" });
    if (me.role === "admin") {
      page.append(form([h("h2", {}, "登记访客"),
        h("div", { class: "row" }, field("姓名", "name", { required: true }), field("身份证号", "id_number", { required: true })),
        h("div", { class: "row" }, field("被访房号", "host_unit", { required: true }), field("有效时长", "valid_for", { value: "4h" }), field("车牌（可选）", "plate"))],
      "登记并生成通行码", async (fd) => {
        const body = { name: fd.get("name"), id_number: fd.get("id_number"), host_unit: fd.get("host_unit"), valid_for: fd.get("valid_for") };
        if (fd.get("plate")) body.plate = fd.get("plate");
        const r = await api("POST", "/visitors", body);
        pass.replaceChildren(h("div", { class: "card" },
          h("h2", {}, `通行码：${fd.get("name")}`),
          h("img", { class: "qr", alt: "访客二维码", src: "/api/v1/qr.svg?data=" + encodeURIComponent(r.qr) }),
          h("p", {}, `PIN：`, h("strong", { id: "visitor-pin" }, r.pin), `　有效至 ${when(r.valid_until)}　证件 ${r.id_masked}`),
          h("button", { class: "secondary noprint", onclick: () => window.print() }, "打印")));
      }));
    }
    page.append(pass);
    const people = (await api("GET", "/people")).filter((p) => p.kind === "visitor");
    page.append(table(["编号", "姓名", "被访房号", "证件", "有效至"], people.map((p) => ({ cells: [p.id, p.name, p.host_unit, p.id_masked, when(p.valid_until)] }))));
  },

  async elders(page) {
    const [elders, unknown] = await Promise.all([api("GET", "/elders"), api("GET", "/wristbands/unknown")]);
    page.append(h("h1", {}, "老人与手环"));
    if (me.role === "admin") {
      page.append(form([h("h2", {}, "登记老人"),
        h("div", { class: "row" }, field("姓名", "name", { required: true }), field("编号（可选）", "id"), field("楼栋", "building"), field("房号", "room")),
        h("div", { class: "row" }, field("网格", "grid"), field("电话", "phone"), field("手环（MAC）", "band"))],
      "登记", async (fd) => {
        const body = { name: fd.get("name"), building: fd.get("building") || "", room: fd.get("room") || "", grid: fd.get("grid") || "" };
        if (fd.get("id")) body.id = fd.get("id");
        if (fd.get("phone")) body.phone = fd.get("phone");
        if (fd.get("band")) body.bands = [fd.get("band")];
        await api("POST", "/elders", body); route();
      }));
    }
    page.append(table(["编号", "姓名", "住址", "网格", "手环"], elders.map((e) => ({ cells: [e.id, e.name, [e.building, e.unit, e.room].filter(Boolean).join(" "), e.grid, (e.bands || []).join(", ")] }))));
    page.append(h("h2", {}, "未登记的手环"));
    if (!unknown.length) page.append(h("p", {}, "没有。"));
    const options = elders.map((e) => h("option", { value: e.id }, `${e.name}（${e.id}）`));
    page.append(table(["手环", "网关", "最近", "次数", "绑定到"], unknown.map((u) => {
      const sel = h("select", {}, options.map((o) => o.cloneNode(true)));
      return { attrs: { "data-band": u.band }, cells: [u.band, u.gateway, when(u.last_seen), u.count, me.role === "admin" ? h("span", {}, sel,
        h("button", { onclick: async () => { try { await api("PATCH", `/elders/${encodeURIComponent(sel.value)}`, { add_bands: [u.band] }); route(); } catch (x) { alert(x.message); } } }, "一键绑定")) : "—"] };
    })));
  },

  async vehicles(page) {
    const v = await api("GET", "/vehicles");
    page.append(h("h1", {}, "车辆"));
    if (me.role === "admin") {
      page.append(form([h("div", { class: "row" }, field("车牌", "plate", { required: true, placeholder: "川A12345" }), field("车主编号", "owner", { required: true }), field("有效至（可选）", "valid_until", { type: "date" }))],
        "添加", async (fd) => { const b = { plate: fd.get("plate"), owner: fd.get("owner") }; if (fd.get("valid_until")) b.valid_until = fd.get("valid_until"); await api("POST", "/vehicles", b); route(); }));
    }
    page.append(table(["车牌", "车主", "有效至", ""], v.map((x) => ({ cells: [x.plate, x.owner, when(x.valid_until),
      me.role === "admin" ? h("button", { class: "secondary", onclick: async () => { if (confirm(`删除 ${x.plate}？`)) { await api("DELETE", `/vehicles/${encodeURIComponent(x.plate)}`); route(); } } }, "删除") : ""] }))));
  },

  async staff(page) {
    const [staff, ladders] = await Promise.all([api("GET", "/staff"), api("GET", "/ladders")]);
    page.append(h("h1", {}, "工作人员与上报层级"));
    if (me.role === "admin") {
      page.append(form([h("div", { class: "row" }, field("编号", "id", { required: true }), field("姓名", "name", { required: true }), field("电话", "phone"), field("职务", "role", { placeholder: "网格员" }), field("网格", "grid"))],
        "添加", async (fd) => { const b = { id: fd.get("id"), name: fd.get("name"), role: fd.get("role") || "", grid: fd.get("grid") || "" }; if (fd.get("phone")) b.phone = fd.get("phone"); await api("POST", "/staff", b); route(); }));
    }
    page.append(table(["编号", "姓名", "电话", "职务", "网格"], staff.map((s) => ({ cells: [s.id, s.name, s.phone || "—", s.role, s.grid] }))));
    const ladderRows = [{ grid: "（默认）", levels: ladders.default }].concat(ladders.grids);
    page.append(h("h2", {}, "上报层级"), table(["网格", "层级"], ladderRows.map((l) => ({ attrs: { "data-grid": l.grid }, cells: [l.grid, (l.levels || []).map((x, i) => `${i + 1}. ${x.name} → ${x.channels.join("、")}${x.staff && x.staff.length ? "（" + x.staff.join("、") + "）" : ""}`).join("　")] }))));
    if (me.role === "admin") {
      // One level per line, as in the CLI: 名称:渠道[+渠道…][:人员[,人员…]]
      page.append(form([h("h2", {}, "设置网格的上报层级"), field("网格", "grid", { required: true }),
        h("label", {}, "层级（每行一级：名称:渠道+渠道:人员,人员）", h("textarea", { name: "levels", rows: 3, required: true, placeholder: "网格员:grid-wecom:s1\n社区办:office-dingtalk" }))],
      "保存", async (fd) => {
        const levels = String(fd.get("levels")).split("\n").map((l) => l.trim()).filter(Boolean).map((l) => {
          const [name, chans, staff] = l.split(":");
          if (!name || !chans) throw new Error(`"${l}" 应为 名称:渠道[:人员]`);
          return { name, channels: chans.split("+").filter(Boolean), staff: (staff || "").split(",").filter(Boolean) };
        });
        await api("PUT", `/ladders/${encodeURIComponent(fd.get("grid"))}`, levels); route();
      }));
    }
  },

  async log(page) {
    const q = new URLSearchParams(location.hash.split("?")[1] || "");
    page.append(h("h1", {}, "通行记录"));
    const f = form([h("div", { class: "row" },
      h("label", {}, "门", h("select", { name: "gate" }, h("option", { value: "" }, "全部"), me.gates.map((g) => h("option", { value: g, selected: q.get("gate") === g }, g)))),
      field("人员编号", "person", { value: q.get("person") || "" }),
      field("开始日期", "since", { type: "date", value: q.get("since") || "" }), field("结束日期", "until", { type: "date", value: q.get("until") || "" }))],
    "筛选", async (fd) => {
      const p = new URLSearchParams();
      for (const k of ["gate", "person", "since", "until"]) if (fd.get(k)) p.set(k, fd.get(k));
      location.hash = "#/log?" + p.toString();
    });
    page.append(f);
    const rows = await api("GET", "/log?" + q.toString());
    page.append(table(["时间", "门", "人员", "方式", "结果", "原因"], rows.slice(-500).reverse().map((r) => {
      const e = r.entry || r;
      return { cells: [when(e.at), e.gate, e.person || "—", e.credential, e.opened ? "放行" : "拒绝", e.reason || ""] };
    })));
  },

  async roster(page) {
    page.append(h("h1", {}, "名册导入"), h("p", {}, "CSV 或 XLSX，每行一条记录，kind 列为 resident / elder / vehicle / wristband。整份文件全部导入或全部不导入。"));
    const file = h("input", { type: "file", name: "roster", accept: ".csv,.xlsx" });
    const photos = h("input", { type: "file", name: "photos", multiple: true, accept: "image/*" });
    const dry = h("input", { type: "checkbox", name: "dry_run", checked: true, style: "display:inline;width:auto" });
    const bar = h("progress", { id: "import-progress", max: 1, value: 0, style: "width:100%" });
    const status = h("p", { id: "import-status", role: "status" });
    const report = h("div", { id: "import-report" });
    page.append(form([h("label", {}, "名册文件", file), h("label", {}, "照片（可多选，按 photo 列的文件名匹配）", photos),
      h("label", {}, dry, " 只检查，不导入（试运行）"), bar, status],
    "开始", async () => {
      report.replaceChildren();
      if (!file.files[0]) throw new Error("请选择名册文件");
      const r = await fetch("/api/v1/roster/parse?name=" + encodeURIComponent(file.files[0].name), { method: "POST", body: file.files[0] });
      const rows = await r.json();
      if (!r.ok) throw new Error(rows.error);
      const byName = Object.fromEntries([...photos.files].map((f) => [f.name, f]));
      const { import: id } = await api("POST", "/roster/imports");
      bar.max = rows.length || 1;
      let done = 0, bad = 0;
      for (let i = 0; i < rows.length; i += 5) {
        const batch = rows.slice(i, i + 5);
        for (const row of batch) {
          const p = (row.cells.photo || "").trim();
          if (p && byName[p]) row.photo_data = await fileB64(byName[p]);
        }
        const v = await api("POST", `/roster/imports/${id}/rows`, batch);
        done += batch.length; bad += v.errors.length;
        bar.value = done;
        status.textContent = `已检查 ${done}/${rows.length} 行，${bad} 行有问题`;
      }
      const res = await api("POST", `/roster/imports/${id}/commit?dry_run=${dry.checked}`);
      status.textContent = res.imported ? `已导入：${JSON.stringify(res.imported_counts)}` : res.errors.length ? `${res.errors.length} 行有问题，未导入任何记录` : `试运行通过：可导入 ${JSON.stringify(res.would_import)}`;
      if (res.errors.length) report.append(table(["行", "类型", "编号", "原因"], res.errors.map((e) => ({ attrs: { "data-line": e.line }, cells: [e.line, e.kind, e.id, e.reason] }))));
    }), report);
    page.append(h("p", {}, h("a", { href: "#", onclick: async (e) => { e.preventDefault(); const v = await api("GET", "/roster"); const csv = [v.columns].concat(v.rows).map((r) => r.map((c) => /[",\n]/.test(c) ? `"${c.replace(/"/g, '""')}"` : c).join(",")).join("\n"); const a = h("a", { href: URL.createObjectURL(new Blob(["\ufeff" + csv], { type: "text/csv" })), download: "roster.csv" }); a.click(); } }, "导出名册（CSV，不含照片和人脸数据）")));
  },

  async compliance(page) {
    const c = await api("GET", "/compliance");
    page.append(h("h1", {}, "合规报告"),
      h("div", { class: "card" },
        h("p", {}, `已存人脸：${c.faces.people} 人（${c.faces.templates} 个模板，加密存储）`),
        c.faces.near_threshold ? h("p", { class: "error" }, `接近 ${c.faces.filing_threshold} 人的备案门槛`) : null,
        h("p", {}, "无同意记录的人脸：", (c.without_consent || []).join("、") || "无"),
        h("p", {}, "没有人脸以外通行方式的住户：", (c.without_face_free_credential || []).join("、") || "无"),
        h("h2", {}, "保存期限"), table(["数据", "期限"], Object.entries(c.retention || {}).map(([k, v]) => ({ cells: [k, v] }))),
        h("h2", {}, "最近清理"), table(["数据", "时间", "删除条数"], (c.last_purges || []).map((p) => ({ cells: [p.what, when(p.at), p.removed] })))));
  },

  async audit(page) {
    const rows = await api("GET", "/audit?limit=300");
    page.append(h("h1", {}, "操作审计"), table(["时间", "操作人", "角色", "操作", "对象", "结果"], rows.map((e) => ({ cells: [when(e.at), e.actor, e.role, e.action, e.target, e.status] }))));
  },
};

const NAV = [["presence", "在位"], ["alerts", "告警"], ["gateways", "网关"], ["residents", "住户"], ["visitors", "访客"], ["elders", "老人/手环"], ["vehicles", "车辆"], ["staff", "人员"], ["log", "通行记录"], ["roster", "名册导入", "admin"], ["compliance", "合规", "admin"], ["audit", "审计", "admin"]];

function showLogin() {
  $("#top").hidden = true;
  $("#page").replaceChildren();
  $("#login").hidden = false;
}

async function route() {
  if (!me) {
    try { me = await api("GET", "/me"); } catch (_) { return; }
  }
  $("#login").hidden = true;
  $("#top").hidden = false;
  $("#site").textContent = me.site_name || me.site;
  $("#who").textContent = `${me.user}（${me.role === "admin" ? "管理员" : "工作人员"}）`;
  const name = (location.hash.replace(/^#\//, "").split("?")[0]) || "presence";
  $("#nav").replaceChildren(...NAV.filter((n) => !n[2] || n[2] === me.role).map(([k, label]) => h("a", { href: `#/${k}`, class: k === name ? "active" : "" }, label)));
  const page = $("#page");
  page.replaceChildren(h("p", {}, "加载中…"));
  const fresh = h("div", {});
  try {
    await (pages[name] || pages.presence)(fresh);
    page.replaceChildren(fresh);
  } catch (x) {
    page.replaceChildren(h("p", { class: "error" }, x.message));
  }
}

$("#login").addEventListener("submit", async (e) => {
  e.preventDefault();
  const fd = new FormData(e.target);
  const r = await fetch("/console/login", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ user: fd.get("user"), password: fd.get("password") }) });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) { $("#login-error").textContent = data.error || `HTTP ${r.status}`; return; }
  $("#login-error").textContent = "";
  e.target.reset();
  me = null;
  route();
});
$("#logout").addEventListener("click", async () => { await fetch("/console/logout", { method: "POST" }); me = null; showLogin(); });
window.addEventListener("hashchange", route);
route();

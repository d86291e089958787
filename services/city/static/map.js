// IOC console map (Leaflet, vendored): the loaded hierarchy's top areas coloured by the status of the selected
// KPI (the tiles' scale), assets in alarm and open incidents as clustered markers. Works with no tile server
// (boundaries alone); draws a tile layer when the service is configured with one (IOC_CITY_MAP_TILE_URL).
// A click on an area opens the area drill-down and announces the choice to other pages (docs/console-map.md):
//   document: CustomEvent "ioc:select-area" {detail: {code, name, level}}, and location.hash "#area/<code>".
// Uses app.js's globals: api, t, I18N, S, kpiName, openDistrict (loaded before this file).
"use strict";

(() => {
  Object.assign(I18N.vi, {
    map: "Bản đồ", allKpis: "Tất cả chỉ số và cảnh báo", communes: "Xã, phường", mapIncident: "Sự cố đang mở",
    mapAssets: "Thiết bị cảnh báo", mapNoTiles: "Chỉ ranh giới (không có bản đồ nền)",
  });
  Object.assign(I18N.en, {
    map: "Map", allKpis: "All KPIs and alarms", communes: "Communes and wards", mapIncident: "Open incident",
    mapAssets: "Assets in alarm", mapNoTiles: "Boundaries only (no base map)",
  });
  const DOMAIN_MARK = {traffic: "T", kiosk: "K", meter: "F", dossier: "D"};
  const M = {map: null, legend: null, areas: null, layers: {}, labels: {}, names: {}, level: "district", status: {},
    markers: null, incidents: null, timer: null, loading: null};

  const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  const colour = (status) => cssVar(`--${["ok", "warning", "critical"].includes(status) ? status : "unknown"}`);

  function hashOffset(text, span) {
    // a stable spot near the area's label for each asset (registries carry no coordinates for every asset yet)
    let h = 2166136261;
    for (const ch of text) h = Math.imul(h ^ ch.charCodeAt(0), 16777619);
    const a = ((h >>> 0) % 3600) / 3600 * 2 * Math.PI, r = span * (0.3 + ((h >>> 12) % 100) / 140);
    return [Math.sin(a) * r, Math.cos(a) * r];
  }

  function selectArea(code) {
    const detail = {code, name: M.names[code] || code, level: M.level};
    location.hash = `#area/${encodeURIComponent(code)}`;
    document.dispatchEvent(new CustomEvent("ioc:select-area", {detail}));
    if (typeof openDistrict === "function") openDistrict(code).catch(() => {});
  }

  async function loadAreas() {
    const body = await api("/v1/map/areas");
    M.level = body.level;
    const section = document.querySelector("#districts-section h2");
    if (section) section.dataset.i18n = body.level === "commune" ? "communes" : "districts";
    if (section) section.textContent = t(section.dataset.i18n);
    // M.map is set last: a refresh while this runs (or after it failed) loads again instead of half a map
    const map = L.map("map", {zoomSnap: 0.25, minZoom: 8, maxZoom: 18});
    try { buildMap(map, body); } catch (e) { map.remove(); throw e; }  // a later refresh starts afresh
  }

  function buildMap(map, body) {
    if (body.tiles && body.tiles.url) {
      L.tileLayer(body.tiles.url, {attribution: body.tiles.attribution || "", maxZoom: 18}).addTo(map);
      document.getElementById("map").dataset.tiles = "on";
    } else {
      document.getElementById("map").dataset.tiles = "off";
    }
    map.attributionControl.setPrefix(false).addAttribution(body.attribution);
    M.areas = L.geoJSON(body.geojson, {
      style: () => ({color: "#0b0f14", weight: 1, fillColor: colour("unknown"), fillOpacity: 0.6}),
      onEachFeature: (f, layer) => {
        const p = f.properties;
        M.layers[p.code] = layer;
        M.labels[p.code] = [p.label[1], p.label[0]];
        M.names[p.code] = p.name;
        layer.on("click", () => selectArea(p.code));
        layer.bindTooltip(() => tooltip(p.code), {sticky: true});
      },
    });
    map.fitBounds(M.areas.getBounds(), {padding: [6, 6]});  // a map without a view adds no layer yet
    M.areas.addTo(map);
    for (const [code, layer] of Object.entries(M.layers)) {
      const e = layer.getElement();
      if (e) { e.dataset.code = code; e.dataset.status = "unknown"; e.classList.add("map-area"); }
    }
    M.markers = L.markerClusterGroup({maxClusterRadius: 40, showCoverageOnHover: false}).addTo(map);
    M.incidents = L.layerGroup().addTo(map);
    const legend = L.control({position: "bottomleft"});
    legend.onAdd = () => { M.legend = L.DomUtil.create("div", "map-legend"); renderLegend(); return M.legend; };
    legend.addTo(map);
    M.map = map;
  }

  function renderLegend() {  // again on every refresh: the language may have changed
    M.legend.replaceChildren(...["ok", "warning", "critical", "unknown"].map((s) => {
      const swatch = document.createElement("i");
      swatch.style.background = colour(s);
      const item = document.createElement("span");
      item.append(swatch, t(s));
      return item;
    }));
  }

  function tooltip(code) {
    const s = M.status[code] || {status: "unknown"};
    const value = s.value === null || s.value === undefined ? "" : ` · ${fmtValue(s.value)}`;
    const alarms = s.open_alarms ? ` · ⚠ ${s.open_alarms}` : "";
    return `${M.names[code] || code}: ${t(s.status)}${value}${alarms}`;
  }

  function fmtValue(v) {
    const kpi = document.getElementById("map-kpi").value;
    const d = S.defs && S.defs[kpi];
    return typeof fmt === "function" ? fmt(v, d ? d.unit : "") : String(v);
  }

  function fillKpis() {
    const sel = document.getElementById("map-kpi");
    const chosen = sel.value;
    const ids = Object.keys(S.defs || {}).sort((a, b) => kpiName(a).localeCompare(kpiName(b)));
    sel.replaceChildren(new Option(t("allKpis"), ""), ...ids.map((id) => new Option(kpiName(id), id)));
    sel.value = ids.includes(chosen) ? chosen : "";
  }

  async function refresh() {
    if (!M.map) {
      if (!M.loading) M.loading = loadAreas().finally(() => { M.loading = null; });
      await M.loading;
    }
    if (document.getElementById("map-kpi").options.length <= 1) {
      fillKpis();
      if (!Object.keys(S.defs || {}).length) setTimeout(schedule, 2000);  // definitions come after the areas
    }
    const kpi = document.getElementById("map-kpi").value;
    const body = await api(`/v1/map/status${kpi ? `?kpi=${encodeURIComponent(kpi)}` : ""}`);
    M.status = body.areas;
    renderLegend();
    for (const [code, layer] of Object.entries(M.layers)) {
      const s = (body.areas[code] || {status: "unknown"}).status;
      layer.setStyle({fillColor: colour(s)});
      const e = layer.getElement();
      if (e) e.dataset.status = s;
    }
    M.markers.clearLayers();
    M.markers.addLayers(body.assets.filter((a) => M.labels[a.district]).map((a) => {
      const [dy, dx] = hashOffset(a.source_id, M.level === "commune" ? 0.006 : 0.015);
      const at = M.labels[a.district];
      const icon = L.divIcon({className: `map-asset sev-${a.severity}`, html: DOMAIN_MARK[a.domain] || "•", iconSize: [18, 18]});
      return L.marker([at[0] + dy, at[1] + dx], {icon, title: `${a.source_id}`})
        .bindTooltip(`${a.source_id} · ${M.names[a.district] || a.district}`);
    }));
    M.incidents.clearLayers();
    for (const i of body.incidents) {
      const at = M.labels[i.district];
      if (!at) continue;
      const icon = L.divIcon({className: `map-incident sev-${i.severity || "warning"}`, html: "!", iconSize: [22, 22]});
      L.marker(at, {icon, title: i.incident_id, zIndexOffset: 1000})
        .on("click", () => selectArea(i.district))
        .bindTooltip(`${t("mapIncident")} · ${M.names[i.district] || i.district} · ${i.alarm_count}`)
        .addTo(M.incidents);
    }
    document.getElementById("map").dataset.ready = "true";
  }

  function schedule() {
    if (M.timer) return;
    M.timer = setTimeout(() => { M.timer = null; refresh().catch((e) => console.warn("map", e)); }, 300);
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("map-kpi").addEventListener("change", schedule);
    const fromHash = /^#area\/(.+)$/.exec(location.hash);
    if (fromHash) document.addEventListener("ioc:areas-changed", () => {
      if (typeof openDistrict === "function") openDistrict(decodeURIComponent(fromHash[1]), false).catch(() => {});
    }, {once: true});
  });
  // app.js announces every reload of the areas (after sign-in, on KPI and alarm changes): follow it
  document.addEventListener("ioc:areas-changed", schedule);
  setInterval(() => { if (M.map) schedule(); }, 30000);
  window.IOC_MAP = M;
})();

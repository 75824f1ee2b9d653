// The customer app's and the back office's journeys, written as their code would be: against a
// client generated from the api's OpenAPI document (openapi-typescript + openapi-fetch) and
// type-checked with `tsc --strict`. Run by crates/xibaar/tests/it/openapi_contract.rs against a
// running pipeline; any type error, unexpected status or missing item fails it.
import createClient from "openapi-fetch";
import type { components, paths } from "./api.js";

declare const process: {
  env: Record<string, string | undefined>;
  exit(code: number): never;
};

type InboxItem = components["schemas"]["InboxItem"];

function need(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

function check(condition: boolean, what: string): asserts condition {
  if (!condition) throw new Error(`failed: ${what}`);
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Asks until `probe` gives a value, for at most 30 s. */
async function eventually<T>(what: string, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await sleep(100);
  }
}

const baseUrl = need("API");
const customerId = need("CUSTOMER_ID");
const app = createClient<paths>({
  baseUrl,
  headers: { authorization: `Bearer ${need("CUSTOMER_TOKEN")}` },
});
const office = createClient<paths>({
  baseUrl,
  headers: { authorization: `Bearer ${need("BACK_OFFICE_TOKEN")}` },
});

async function customerApp(): Promise<void> {
  // Register the phone, and see it listed.
  const registered = await app.POST("/v1/devices", {
    body: {
      device_id: "phone-1",
      token: "ts-client-token-1",
      platform: "android",
      app_id: need("APP_ID"),
      locale: "fr-SN",
    },
  });
  check(registered.response.status === 202, `register: ${registered.response.status}`);
  check(registered.data?.status === "registered", "register: status");
  await eventually("the device is listed", async () => {
    const { data } = await app.GET("/v1/devices");
    return data?.devices.find((d) => d.device_id === "phone-1" && d.locale === "fr-SN");
  });

  // Open the live stream before anything is sent.
  const live = await app.GET("/v1/me/stream", { parseAs: "stream" });
  check(live.response.status === 200 && live.data != null, `stream: ${live.response.status}`);
  const reader = live.data.pipeThrough(new TextDecoderStream()).getReader();

  // The back office sends three notifications, each with its own key.
  const titles = ["Facture disponible", "Coupure planifiée", "Crédit faible"];
  const ids: string[] = [];
  for (const [i, title] of titles.entries()) {
    const sent = await office.POST("/v1/notifications", {
      params: { header: { "Idempotency-Key": `ts-journey-${i}` } },
      body: {
        priority: "high",
        audience: { kind: "customers", customer_ids: [customerId] },
        content: { title, body: "Xibaar", data: { n: String(i) } },
        category: "billing",
        ttl_seconds: 3600,
      },
    });
    check(sent.response.status === 202 && sent.data !== undefined, `send ${i}: ${sent.response.status}`);
    check(sent.data.status === "accepted", "send: status");
    ids.push(sent.data.notification_id);
  }
  // A retry with the same key names the same notification.
  const retried = await office.POST("/v1/notifications", {
    params: { header: { "Idempotency-Key": "ts-journey-0" } },
    body: {
      priority: "high",
      audience: { kind: "customers", customer_ids: [customerId] },
      content: { title: titles[0] ?? "", body: "Xibaar", data: { n: "0" } },
      category: "billing",
      ttl_seconds: 3600,
    },
  });
  check(retried.data?.notification_id === ids[0], "a retry names the same notification");
  check(retried.response.headers.get("idempotent-replayed") === "true", "the retry is a replay");
  // The same key for another request is refused, as a problem.
  const reused = await office.POST("/v1/notifications", {
    params: { header: { "Idempotency-Key": "ts-journey-0" } },
    body: {
      priority: "urgent",
      audience: { kind: "customers", customer_ids: [customerId] },
      content: { title: titles[0] ?? "", body: "Xibaar", data: { n: "0" } },
    },
  });
  check(reused.response.status === 422, `reused key: ${reused.response.status}`);
  check(reused.error?.errors?.[0]?.field === "Idempotency-Key", "reused key: the field");

  // Each one completes, and arrives on the live stream.
  for (const id of ids) {
    await eventually(`notification ${id} completes`, async () => {
      const { data } = await office.GET("/v1/notifications/{id}", { params: { path: { id } } });
      return data?.status === "completed" && data.sent === 1 ? data : undefined;
    });
  }
  // The live stream's event ids are the items' places in the inbox's order.
  const streamed = new Map<string, number>();
  let buffered = "";
  const streamDeadline = Date.now() + 30_000;
  while (streamed.size < ids.length && Date.now() < streamDeadline) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += value;
    let end;
    while ((end = buffered.indexOf("\n\n")) >= 0) {
      const event = buffered.slice(0, end);
      buffered = buffered.slice(end + 2);
      const lines = event.split("\n");
      const data = lines.find((line) => line.startsWith("data:"));
      const place = lines.find((line) => line.startsWith("id:"));
      if (event.includes("event: inbox_item") && data && place) {
        const item = JSON.parse(data.slice(5)) as InboxItem;
        streamed.set(item.notification_id, Number(place.slice(3).trim()));
      }
    }
  }
  await reader.cancel();
  check(ids.every((id) => streamed.has(id)), `live stream: ${[...streamed.keys()].join(",")}`);

  // Page the inbox two at a time with the cursor: every item once, newest first.
  const first = await app.GET("/v1/me/inbox", { params: { query: { limit: 2 } } });
  check(first.data !== undefined, `inbox: ${first.response.status}`);
  check(first.data.items.length === 2 && typeof first.data.next_cursor === "string", "inbox: first page");
  const second = await app.GET("/v1/me/inbox", {
    params: { query: { limit: 2, cursor: first.data.next_cursor } },
  });
  check(second.data !== undefined, `inbox page 2: ${second.response.status}`);
  // Newest first by arrival in the inbox: the outcomes' order, which the live stream's ids
  // give (two concurrent pushes' own `received_at` need not follow it to the microsecond).
  const paged: InboxItem[] = [...first.data.items, ...second.data.items];
  const pagedIds = paged.map((i) => i.notification_id);
  check(
    pagedIds.length === 3 && new Set(pagedIds).size === 3 && ids.every((id) => pagedIds.includes(id)),
    `inbox: every item once (${pagedIds.join(",")})`,
  );
  check(
    pagedIds.every((id, i) => i === 0 || (streamed.get(pagedIds[i - 1] ?? "") ?? 0) > (streamed.get(id) ?? 0)),
    `inbox: newest first (${pagedIds.map((id) => streamed.get(id)).join(",")})`,
  );
  check(first.data.unread_count === 3, `inbox: unread ${first.data.unread_count}`);

  // Read one: the unread count follows.
  const oldest = ids[0] ?? "";
  const marked = await app.POST("/v1/me/inbox/{id}/read", { params: { path: { id: oldest } } });
  check(marked.response.status === 202 && marked.data?.status === "read", "mark read");
  await eventually("the unread count drops", async () => {
    const { data } = await app.GET("/v1/me/inbox/unread-count");
    return data?.unread_count === 2 ? data : undefined;
  });
  const unreadOnly = await app.GET("/v1/me/inbox", { params: { query: { unread: true } } });
  check(unreadOnly.data?.items.length === 2, "unread items only");

  // Choose categories.
  const before = await app.GET("/v1/me/preferences");
  check(before.data?.categories.marketing === false, "marketing is opt-in");
  const changed = await app.PUT("/v1/me/preferences", { body: { categories: { marketing: true } } });
  check(changed.response.status === 202 && changed.data?.changed.marketing === true, "preferences change");
  await eventually("the choice is kept", async () => {
    const { data } = await app.GET("/v1/me/preferences");
    return data?.categories.marketing === true ? data : undefined;
  });

  // Someone else's (or no) device is not found, as a problem.
  const missing = await app.DELETE("/v1/devices/{id}", { params: { path: { id: "not-mine" } } });
  check(missing.response.status === 404 && missing.error?.status === 404, "remove: 404");
}

async function backOffice(): Promise<void> {
  // The timeline of a notification, from the log.
  const { data: sent } = await office.POST("/v1/notifications", {
    params: { header: { "Idempotency-Key": "ts-journey-timeline" } },
    body: {
      priority: "urgent",
      audience: { kind: "device", customer_id: customerId, device_id: "phone-1" },
      content: { title: "Coupure imminente", body: "Médina" },
      category: "outage",
    },
  });
  check(sent !== undefined, "send to a device");
  const id = sent.notification_id;
  const timeline = await eventually("the timeline has the outcome", async () => {
    const { data } = await office.GET("/v1/notifications/{id}/timeline", { params: { path: { id } } });
    return data?.events.some((e) => e.type === "delivery.page_succeeded") ? data : undefined;
  });
  check(timeline.events[0]?.type === "notification.accepted", "timeline starts accepted");

  // A send for tomorrow, canceled before it goes out.
  const tomorrow = new Date(Date.now() + 24 * 3600 * 1000).toISOString();
  const scheduled = await office.POST("/v1/notifications", {
    body: {
      priority: "normal",
      audience: { kind: "customers", customer_ids: [customerId] },
      content: { title: "Maintenance demain", body: "" },
      send_at: tomorrow,
    },
  });
  check(scheduled.data?.status === "scheduled" && typeof scheduled.data.send_at === "string", "scheduled");
  const scheduledId = scheduled.data.notification_id;
  const status = await office.GET("/v1/notifications/{id}", { params: { path: { id: scheduledId } } });
  check(status.data?.status === "scheduled", `status of the scheduled send: ${status.data?.status}`);
  const canceled = await office.DELETE("/v1/notifications/{id}", { params: { path: { id: scheduledId } } });
  check(canceled.response.status === 200 && canceled.data?.status === "canceled", "cancel");

  // Daily figures.
  const stats = await office.GET("/v1/stats/daily", { params: { query: {} } });
  check(stats.data !== undefined && stats.data.days.some((d) => d.outcome === "succeeded"), "daily stats");
}

await customerApp();
await backOffice();
console.log("journeys passed");

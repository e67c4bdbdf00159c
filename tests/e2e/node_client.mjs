// Segment's official Node client (@segment/analytics-node 3.x) against `stipple serve`.
//
// Run by `cargo xtask e2e`: node node_client.mjs HOST WRITE_KEY PREFIX
//
// Sends identify, track, page, screen, group and alias, each with its own messageId
// (PREFIX-...), waits with closeAndFlush(), and prints one JSON report on stdout: every
// call with the event the library built and whether its delivery failed, and every
// error the library emitted.
import { Analytics } from '@segment/analytics-node'

const [host, writeKey, prefix] = process.argv.slice(2)
const report = { client: 'analytics-node', calls: [], errors: [] }

const analytics = new Analytics({ writeKey, host, maxEventsInBatch: 4, flushInterval: 200, maxRetries: 3, httpRequestTimeout: 10000 })
analytics.on('error', (err) => report.errors.push({ error: String(err?.reason ?? err?.message ?? err), code: err?.code }))

const user = `${prefix}-user`
const anon = `${prefix}-anon`
const mid = (kind) => `${prefix}-${kind}`

// Each call's callback gets (err, ctx) once its batch is sent or has failed.
function call(method, params) {
  return new Promise((resolve) => {
    analytics[method](params, (err, ctx) => {
      report.calls.push({ ok: !err, error: err ? String(err?.message ?? err) : undefined, message: ctx?.event })
      resolve()
    })
  })
}

const done = Promise.all([
  call('identify', { userId: user, anonymousId: anon, traits: { email: 'node@example.com', plan: 'team', logins: 5, beta: false }, messageId: mid('identify') }),
  call('track', { userId: user, event: 'Node Order', properties: { revenue: 20, currency: 'USD', nested: { a: 'b' } }, context: { device: { type: 'server' } }, messageId: mid('track') }),
  call('page', { userId: user, category: 'Docs', name: 'Node Page', properties: { path: '/node' }, messageId: mid('page') }),
  call('screen', { userId: user, name: 'Node Screen', properties: { variant: 'node' }, messageId: mid('screen') }),
  call('group', { userId: user, groupId: `${prefix}-group`, traits: { name: 'NodeCo', seats: 11 }, messageId: mid('group') }),
  call('alias', { userId: user, previousId: anon, messageId: mid('alias') }),
])
await analytics.closeAndFlush({ timeout: 30000 })
await Promise.race([done, new Promise((r) => setTimeout(r, 1000))])
console.log(JSON.stringify(report))

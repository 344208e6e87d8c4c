// Real JS peers for the networking interop tests: Helia (Bitswap, UnixFS) and js-libp2p
// with @libp2p/gossipsub. Each listens on 127.0.0.1 only, with no bootstrap list and no
// other discovery, so it only ever talks to the peers a test names.
//
//   node peer.mjs helia-serve FILE            adds FILE, prints {"cid", "id", "addrs"} and
//                                             serves it until standard input closes
//   node peer.mjs helia-fetch MULTIADDR CID OUT
//                                             dials MULTIADDR, fetches CID over Bitswap into
//                                             OUT, prints {"bytes", "seconds"}
//   node peer.mjs gossip MULTIADDR TOPIC TEXT dials MULTIADDR, joins TOPIC, publishes TEXT
//                                             until a message from that peer arrives, prints
//                                             {"from", "data", "signed"} and goes on
//                                             publishing until standard input closes
//
// Every wait is bounded (60 s); on a timeout it exits non-zero with a message.

import { readFile, writeFile } from 'node:fs/promises'
import { createHeliaLight } from 'helia'
import { withBitswap } from '@helia/bitswap'
import { withLibp2pLight } from '@helia/libp2p'
import { unixfs } from '@helia/unixfs'
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { gossipsub } from '@libp2p/gossipsub'
import { multiaddr } from '@multiformats/multiaddr'
import { CID } from 'multiformats/cid'

const LIMIT_MS = 60_000

function libp2pOptions (services = {}) {
  return {
    addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    peerDiscovery: [],
    services: { identify: identify(), ping: ping(), ...services }
  }
}

async function helia () {
  const node = withBitswap(withLibp2pLight(createHeliaLight(), libp2pOptions()))
  await node.start()
  return node
}

function stdinClosed () {
  return new Promise(resolve => {
    process.stdin.on('end', resolve)
    process.stdin.on('close', resolve)
    process.stdin.resume()
  })
}

function deadline (what) {
  return setTimeout(() => {
    console.error(`timed out after ${LIMIT_MS} ms: ${what}`)
    process.exit(2)
  }, LIMIT_MS)
}

async function heliaServe (file) {
  const node = await helia()
  const cid = await unixfs(node).addBytes(await readFile(file))
  console.log(JSON.stringify({
    cid: cid.toString(),
    id: node.libp2p.peerId.toString(),
    addrs: node.libp2p.getMultiaddrs().map(a => a.toString())
  }))
  await stdinClosed()
  await node.stop()
}

async function heliaFetch (addr, cid, out) {
  const timer = deadline(`fetching ${cid} from ${addr}`)
  const node = await helia()
  await node.libp2p.dial(multiaddr(addr))
  const started = performance.now()
  const chunks = []
  for await (const chunk of unixfs(node).cat(CID.parse(cid))) {
    chunks.push(chunk)
  }
  const seconds = (performance.now() - started) / 1000
  const bytes = Buffer.concat(chunks)
  await writeFile(out, bytes)
  console.log(JSON.stringify({ bytes: bytes.length, seconds }))
  clearTimeout(timer)
  await node.stop()
}

async function gossip (addr, topic, text) {
  const timer = deadline(`a gossip message on ${topic} from ${addr}`)
  const node = await createLibp2p(libp2pOptions({
    pubsub: gossipsub({ globalSignaturePolicy: 'StrictSign', emitSelf: false })
  }))
  const remote = multiaddr(addr)
  const remotePeer = remote.getComponents().find(c => c.name === 'p2p')?.value
  const pubsub = node.services.pubsub
  let received = false
  pubsub.addEventListener('message', event => {
    const msg = event.detail
    if (received || msg.topic !== topic || msg.type !== 'signed') return
    if (msg.from.toString() !== remotePeer) return
    received = true
    clearTimeout(timer)
    console.log(JSON.stringify({
      from: msg.from.toString(),
      data: new TextDecoder().decode(msg.data),
      signed: msg.signature != null && msg.signature.length > 0
    }))
  })
  pubsub.subscribe(topic)
  await node.dial(remote)
  const data = new TextEncoder().encode(text)
  const publishing = setInterval(() => {
    pubsub.publish(topic, data).catch(() => {}) // no mesh yet: try again next tick
  }, 250)
  await stdinClosed()
  clearInterval(publishing)
  await node.stop()
}

const [command, ...args] = process.argv.slice(2)
const commands = { 'helia-serve': heliaServe, 'helia-fetch': heliaFetch, gossip }
if (commands[command] == null) {
  console.error(`unknown command ${command}; one of ${Object.keys(commands).join(', ')}`)
  process.exit(1)
}
try {
  await commands[command](...args)
  process.exit(0)
} catch (err) {
  console.error(err)
  process.exit(1)
}

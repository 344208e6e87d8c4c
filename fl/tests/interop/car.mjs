// CAR files through the JS IPFS stack Helia is built on (@ipld/car, ipfs-unixfs-importer,
// ipfs-unixfs-exporter), for fl/tests/interop.rs.
//
//   node car.mjs read FILE.car           verifies every block, exports the first root as a
//                                        UnixFS file, prints {roots, blocks, size, sha256}
//   node car.mjs write IN OUT.car        imports IN with Helia's defaults (CIDv1, raw leaves),
//                                        writes its DAG as a CAR, prints the root CID
import fs from 'node:fs'
import crypto from 'node:crypto'
import { Readable } from 'node:stream'
import { CarReader, CarWriter } from '@ipld/car'
import { importer } from 'ipfs-unixfs-importer'
import { exporter } from 'ipfs-unixfs-exporter'
import { MemoryBlockstore } from 'blockstore-core/memory'
import { sha256 } from 'multiformats/hashes/sha2'
import { CID } from 'multiformats/cid'

const [mode, ...args] = process.argv.slice(2)

async function read (path) {
  const reader = await CarReader.fromIterable(fs.createReadStream(path))
  const store = new MemoryBlockstore()
  let blocks = 0
  for await (const { cid, bytes } of reader.blocks()) {
    if (cid.multihash.code !== sha256.code) throw new Error(`${cid}: unexpected hash`)
    const digest = await sha256.digest(bytes)
    if (!equal(digest.bytes, cid.multihash.bytes)) throw new Error(`block ${cid} fails verification`)
    await store.put(cid, bytes)
    blocks++
  }
  const roots = (await reader.getRoots()).map(String)
  const entry = await exporter(CID.parse(roots[0]), store)
  const hash = crypto.createHash('sha256')
  let size = 0
  for await (const chunk of entry.content()) { hash.update(chunk); size += chunk.length }
  console.log(JSON.stringify({ roots, blocks, size, sha256: hash.digest('hex') }))
}

async function write (input, output) {
  const store = new MemoryBlockstore()
  let root
  const options = { cidVersion: 1, rawLeaves: true }
  for await (const entry of importer([{ content: fs.createReadStream(input) }], store, options)) root = entry.cid
  const { writer, out } = CarWriter.create([root])
  const done = new Promise((resolve, reject) => {
    Readable.from(out).pipe(fs.createWriteStream(output)).on('finish', resolve).on('error', reject)
  })
  // Depth-first from the root, as `ipfs dag export` orders blocks.
  const seen = new Set()
  const visit = async (cid) => {
    if (seen.has(cid.toString())) return
    seen.add(cid.toString())
    const bytes = await getBytes(store, cid)
    await writer.put({ cid, bytes })
    if (cid.code === 0x70) {
      const { decode } = await import('@ipld/dag-pb')
      for (const link of decode(bytes).Links) await visit(link.Hash)
    }
  }
  await visit(root)
  await writer.close()
  await done
  console.log(root.toString())
}

// blockstore-core 7 streams a block's bytes; older versions return them whole.
async function getBytes (store, cid) {
  const got = await store.get(cid)
  if (got instanceof Uint8Array) return got
  const parts = []
  for await (const part of got) parts.push(part)
  return Buffer.concat(parts)
}

function equal (a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i])
}

if (mode === 'read') await read(args[0])
else if (mode === 'write') await write(args[0], args[1])
else throw new Error(`unknown mode ${mode}`)

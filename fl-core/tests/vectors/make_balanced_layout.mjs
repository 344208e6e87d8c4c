// Prints CIDs of the js UnixFS importer (ipfs-unixfs-importer, used by Helia) for files
// whose trees are 1 to 5 levels deep, using small chunks and few links per node so that
// every boundary of the balanced layout (full levels, one-over, single leftover leaves)
// is covered in a few kilobytes. fl-core/tests/conformance.rs checks ours against them.
//
//   npm install && node make_balanced_layout.mjs > balanced_layout.json
import { importer } from 'ipfs-unixfs-importer'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'
import { MemoryBlockstore } from 'blockstore-core/memory'

const formula = (size) => Uint8Array.from({ length: size }, (_, i) => (i * 31 + 7) % 251)

async function cid (bytes, chunkSize, maxLinks, v0) {
  const options = {
    cidVersion: v0 ? 0 : 1,
    rawLeaves: !v0,
    reduceSingleLeafToSelf: true,
    chunker: fixedSize({ chunkSize }),
    layout: balanced({ maxChildrenPerNode: maxLinks })
  }
  if (v0) options.leafType = 'file'
  let root
  for await (const entry of importer([{ content: bytes }], new MemoryBlockstore(), options)) root = entry.cid
  return root.toString()
}

const out = []
const cases = []
for (const [chunk, links] of [[16, 2], [16, 3], [7, 4], [10, 174]]) {
  const sizes = new Set([0, 1, chunk - 1, chunk, chunk + 1])
  for (let depth = 1; depth <= 5; depth++) {
    const full = chunk * links ** depth
    if (full > 200000) break
    for (const s of [full - 1, full, full + 1, full + chunk, 2 * full + 3]) sizes.add(s)
  }
  for (const size of [...sizes].sort((a, b) => a - b)) cases.push([size, chunk, links])
}
for (const [size, chunk, links] of cases) {
  const bytes = formula(size)
  out.push({
    size,
    chunk_size: chunk,
    max_links: links,
    cidv1_raw: await cid(bytes, chunk, links, false),
    cidv0: await cid(bytes, chunk, links, true)
  })
}
console.log(JSON.stringify(out, null, 1))

/**
 * Media types cs reads and writes: OCI image-spec v1 and their Docker
 * schema 2 counterparts (https://github.com/opencontainers/image-spec/blob/main/media-types.md).
 */

export const MediaType = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayer: 'application/vnd.oci.image.layer.v1.tar',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  ociLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
  ociLayerNondistributableGzip: 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
  ociEmpty: 'application/vnd.oci.empty.v1+json',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  dockerForeignLayerGzip: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
} as const;

export const INDEX_TYPES: ReadonlySet<string> = new Set([MediaType.ociIndex, MediaType.dockerManifestList]);
export const MANIFEST_TYPES: ReadonlySet<string> = new Set([MediaType.ociManifest, MediaType.dockerManifest]);

/** What cs sends in `Accept` when it fetches a manifest. */
export const MANIFEST_ACCEPT = [MediaType.ociIndex, MediaType.ociManifest, MediaType.dockerManifestList, MediaType.dockerManifest].join(', ');

export type Compression = 'none' | 'gzip' | 'zstd';

const LAYER_COMPRESSION: Record<string, Compression> = {
  [MediaType.ociLayer]: 'none',
  [MediaType.ociLayerGzip]: 'gzip',
  [MediaType.ociLayerZstd]: 'zstd',
  [MediaType.ociLayerNondistributableGzip]: 'gzip',
  [MediaType.dockerLayerGzip]: 'gzip',
  [MediaType.dockerForeignLayerGzip]: 'gzip',
  'application/vnd.oci.image.layer.nondistributable.v1.tar': 'none',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd': 'zstd',
};

/** The compression of a layer media type, or undefined when it is not a layer cs can apply. */
export function layerCompression(mediaType: string): Compression | undefined {
  return LAYER_COMPRESSION[mediaType];
}

export function isManifestType(mediaType: string): boolean {
  return INDEX_TYPES.has(mediaType) || MANIFEST_TYPES.has(mediaType);
}

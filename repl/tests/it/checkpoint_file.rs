//! Editing a data directory's newest checkpoint file the way an older version would have
//! written it (shared by the restart tests and the durability bench).

use std::path::Path;

use serde_json::Value;

/// Rewrites the newest checkpoint as a version-1 one: the manifest without views and the
/// sections of their state cut off, the checksum recomputed.
pub fn strip_view_state(dir: &Path) {
    let checkpoints = dir.join("checkpoints");
    let mut files: Vec<_> = std::fs::read_dir(&checkpoints)
        .expect("checkpoint dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "cfck"))
        .collect();
    files.sort();
    let newest = files.last().expect("a checkpoint");
    let bytes = std::fs::read(newest).expect("read checkpoint");
    let length = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes")) as usize;
    let manifest_length = length(8);
    let mut manifest: Value = serde_json::from_slice(&bytes[16..16 + manifest_length]).expect("manifest");
    let relations = manifest["relations"].as_array().expect("relations").len();
    let mut at = 16 + manifest_length;
    for _ in 0..relations {
        at += 8 + length(at);
    }
    manifest["version"] = 1.into();
    manifest.as_object_mut().expect("object").remove("views").expect("the checkpoint held view state");
    let manifest = serde_json::to_vec(&manifest).expect("json");
    let mut out = bytes[..8].to_vec();
    out.extend_from_slice(&(manifest.len() as u64).to_le_bytes());
    out.extend_from_slice(&manifest);
    out.extend_from_slice(&bytes[16 + manifest_length..at]);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    std::fs::write(newest, out).expect("rewrite checkpoint");
}

//! Tree blobs (already opened and verified): postcard plus name rules.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeboat_repo::{Id, Tree};

fuzz_target!(|data: &[u8]| {
    let id = Id::of_bytes(data);
    if let Ok(tree) = Tree::decode(&id, data) {
        for n in &tree.nodes {
            assert!(tree.find(&n.name).is_some(), "every name resolves");
            let _ = n.name_lossy();
        }
        let again = Tree::decode(&id, &tree.encode()).expect("re-encoded tree decodes");
        assert_eq!(again, tree);
    }
});

//! The backends under test: the embedded index in a temporary directory,
//! or an index of its own on the OpenSearch test node.

use search::{OpenSearchIndex, OpenSearchOptions, SearchIndex, TantivyIndex};

pub(crate) fn opensearch_url() -> String {
    std::env::var("TIMELINE_OPENSEARCH_URL").unwrap_or_else(|_| "http://127.0.0.1:9200".into())
}

/// Where a backend under test keeps its index between opens.
pub(crate) enum Backend {
    Embedded(tempfile::TempDir),
    OpenSearch(OpenSearchOptions),
}

pub(crate) enum Opened {
    Embedded(TantivyIndex),
    OpenSearch(OpenSearchIndex),
}

impl Opened {
    pub(crate) fn index(&self) -> &dyn SearchIndex {
        match self {
            Opened::Embedded(index) => index,
            Opened::OpenSearch(index) => index,
        }
    }
}

impl Backend {
    pub(crate) fn embedded() -> Self {
        Backend::Embedded(tempfile::tempdir().unwrap())
    }

    /// A fresh index of its own on the test node (two shards, so that
    /// routing by conversation matters).
    pub(crate) fn opensearch(name: &str) -> Self {
        let mut options = OpenSearchOptions::new(
            opensearch_url(),
            format!("test-{name}-{}", std::process::id()),
        );
        options.shards = 2;
        let backend = Backend::OpenSearch(options);
        if let Opened::OpenSearch(index) = backend.open() {
            index.delete().unwrap();
        }
        backend
    }

    pub(crate) fn open(&self) -> Opened {
        match self {
            Backend::Embedded(dir) => Opened::Embedded(TantivyIndex::open(dir.path()).unwrap()),
            Backend::OpenSearch(options) => {
                Opened::OpenSearch(OpenSearchIndex::open(options).unwrap_or_else(|e| {
                    panic!(
                        "no OpenSearch node at {} ({e}): start one with \
                         scripts/opensearch-server start, or set TIMELINE_OPENSEARCH_URL",
                        options.url
                    )
                }))
            }
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Backend::Embedded(_) => "embedded",
            Backend::OpenSearch(_) => "opensearch",
        }
    }

    /// Drops what the backend keeps outside the test's directories.
    pub(crate) fn clean_up(self) {
        if let Backend::OpenSearch(_) = &self
            && let Opened::OpenSearch(index) = self.open()
        {
            index.delete().unwrap();
        }
    }
}

//! Prints the API reference as Markdown, generated from the CRD schemas
//! (`make crds` writes it to `docs/reference.md`; a test fails when the
//! committed file drifts).

fn main() {
    print!("{}", ringwarden_crds::reference::markdown());
}

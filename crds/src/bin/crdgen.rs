//! Prints the CustomResourceDefinitions as YAML (`make crds` writes them to
//! `crds/*.yaml`; a test fails when the committed files drift).

fn main() {
    print!("{}", ringwarden_crds::crd_yaml());
}

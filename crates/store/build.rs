// `sqlx::migrate!` embeds the migrations at compile time but does not tell cargo about
// them: without this a new migration file would not be built into an incremental build.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}

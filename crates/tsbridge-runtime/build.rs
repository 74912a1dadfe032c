//! Rebuilds the crate when a migration is added or changed: `sqlx::migrate!`
//! embeds `migrations/` at compile time, and Cargo cannot see a new file in
//! a folder no Rust source names (a build would ship the previous schema).

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}

//! mesh's kernel programs. Each file holds one program; `maps` holds the
//! maps they share. Every map is pinned by name so a restarted agent finds
//! the same state (and the attached programs keep working while it is away).
#![no_std]
#![no_main]

mod inbound;
mod maps;
mod redirect;
mod sockops;
mod splice;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

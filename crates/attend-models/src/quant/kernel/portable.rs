//! The portable kernel: plain integer dot products per 16-code group.

use super::{dispatch_tile_shape, widen, Tile, MAX_TILE_ROWS, MAX_TILE_TOKENS};
use crate::quant::unpack::{GROUP, LANE};

pub(super) fn dot_tile(tile: &Tile) -> [[f32; MAX_TILE_TOKENS]; MAX_TILE_ROWS] {
    dispatch_tile_shape!(dot_tile_fixed, tile)
}

fn dot_tile_fixed<const R: usize, const T: usize>(
    tile: &Tile,
) -> [[f32; MAX_TILE_TOKENS]; MAX_TILE_ROWS] {
    let p = tile.padded;
    let mut acc = [[0.0f32; T]; R];
    for (r, acc_row) in acc.iter_mut().enumerate() {
        let w_codes = &tile.w_codes[r * p..(r + 1) * p];
        let w_scales = &tile.w_scales[r * p / LANE..(r + 1) * p / LANE];
        for (t, acc_rt) in acc_row.iter_mut().enumerate() {
            let x_codes = &tile.x_codes[t * p..(t + 1) * p];
            let x_scales = &tile.x_scales[t * p / LANE..(t + 1) * p / LANE];

            // Scales are constant within a 16-code group, so one integer sum
            // per group carries the same value as four lane sums.
            for g in 0..p / GROUP {
                let range = g * GROUP..(g + 1) * GROUP;
                let idot: i32 = w_codes[range.clone()]
                    .iter()
                    .zip(&x_codes[range])
                    .map(|(&w, &x)| w as i32 * x as i32)
                    .sum();
                let lane = g * GROUP / LANE;
                *acc_rt += idot as f32 * (w_scales[lane] * x_scales[lane]);
            }

            // The offsets times the activation sums.
            let groups = p / GROUP;
            let w_offsets = &tile.w_offsets[r * groups..(r + 1) * groups];
            let x_sums = &tile.x_sums[t * groups..(t + 1) * groups];
            for (o, s) in w_offsets.iter().zip(x_sums) {
                *acc_rt += o * s;
            }
        }
    }
    widen(acc)
}

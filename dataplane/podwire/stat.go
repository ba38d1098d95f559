package podwire

import (
	"os"
	"syscall"
)

func statIno(fi os.FileInfo) ([2]uint64, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return [2]uint64{}, false
	}
	return [2]uint64{st.Dev, st.Ino}, true
}
